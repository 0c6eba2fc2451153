"""``tidings events`` and ``tidings projections`` against a real SQLite file."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from tidings.cli.main import _register_command_groups, cli
from tidings.eventsourcing import EventStore
from tidings.persistence.sqlite import sqlite_engine
from tidings.testing.store_contract import ContractAccount, Opened

_register_command_groups()


@pytest.fixture
def database(tmp_path: Path) -> str:
    path = tmp_path / "events.db"
    engine = sqlite_engine(path)
    store = EventStore(engine)
    store.create_tables()
    for name in ("ann", "bob"):
        account = ContractAccount.open(name, name)
        account.deposit(5)
        store.save(account)
    store.append("Other-1", [Opened("zed")], expected_version=0)
    engine.dispose()
    return f"sqlite:///{path}"


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_events_read_pages_with_filters(database: str) -> None:
    code, out = invoke("events", "read", "--url", database, "--limit", "3", "--json")
    assert code == 0
    page = json.loads(out)
    assert [e["stream_id"] for e in page["events"]] == [
        "ContractAccount-ann",
        "ContractAccount-ann",
        "ContractAccount-bob",
    ]
    assert page["events"][1]["payload"] == {"amount": 5}
    code, out = invoke("events", "read", "--url", database, "--from", page["next"], "--json")
    rest = json.loads(out)["events"]
    assert [(e["stream_id"], e["stream_version"]) for e in rest] == [
        ("ContractAccount-bob", 2),
        ("Other-1", 1),
    ]
    code, out = invoke(
        "events", "read", "--url", database, "--type", "tidings.contract.Opened",
        "--prefix", "ContractAccount-", "--json",
    )  # fmt: skip
    assert [e["stream_id"] for e in json.loads(out)["events"]] == [
        "ContractAccount-ann",
        "ContractAccount-bob",
    ]
    code, out = invoke("events", "read", "--url", database, "--stream", "Other-1")
    assert code == 0 and "Other-1@1  tidings.contract.Opened v1" in out


def test_events_stream_and_errors(database: str) -> None:
    code, out = invoke("events", "stream", "ContractAccount-bob", "--url", database, "--backward")
    assert code == 0
    assert out.index("@2") < out.index("@1")
    code, out = invoke("events", "stream", "ContractAccount-nobody", "--url", database)
    assert code == 1 and "stream 'ContractAccount-nobody' not found" in out
    code, out = invoke("events", "read", "--url", database, "--from", "soon")
    assert code == 2 and "not a log checkpoint" in out


APP = """
    from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update
    from tidings.eventsourcing import Projection, Projections
    from tidings.persistence.sqlite import sqlite_engine


    class Counts(Projection):
        name = "counts"

        def define_tables(self, metadata, suffix):
            return {"counts": Table(f"counts{suffix}", metadata,
                                    Column("type", String(200), primary_key=True),
                                    Column("n", Integer, nullable=False))}

        def handle(self, envelope, conn, tables):
            t = tables["counts"]
            if conn.execute(select(t.c.n).where(t.c.type == envelope.event_type)).first():
                conn.execute(update(t).where(t.c.type == envelope.event_type).values(n=t.c.n + 1))
            else:
                conn.execute(insert(t).values(type=envelope.event_type, n=1))


    def app():
        return Projections(sqlite_engine({path!r}), [Counts()], page_size=2)
"""


def test_projections_list_status_rebuild(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"cli_app_{uuid.uuid4().hex[:8]}"
    path = database.removeprefix("sqlite:///")
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(APP).replace("{path!r}", repr(path)))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = f"{module}:app"
    code, out = invoke("projections", "list", "--app", spec, "--json")
    assert code == 0
    (listed,) = json.loads(out)
    assert (listed["name"], listed["generation"], listed["behind"]) == ("counts", 1, 5)
    code, out = invoke("projections", "rebuild", "counts", "--app", spec, "--json")
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["rebuilt_events"] == 5
    assert summary["generation"] == 2 and summary["behind"] == 0
    assert "events/s" in out, "the progress bar shows the rate"
    code, out = invoke("projections", "status", "counts", "--app", spec)
    assert code == 0 and "events_done: 5" in out
    code, out = invoke("projections", "status", "nope", "--app", spec)
    assert code == 1 and "no projection named 'nope'" in out
    code, out = invoke("projections", "list", "--app", "nomodule_here:app")
    assert code == 2 and "cannot load" in out
    code, out = invoke("projections", "list", "--app", "json:dumps")
    assert code == 2


def test_main_registers_the_groups() -> None:
    assert {"events", "projections"} <= set(cli.commands)
