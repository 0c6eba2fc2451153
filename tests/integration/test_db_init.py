"""``tidings db init`` creates every table set (or the chosen ones), idempotently."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, inspect

from tidings.cli.main import _register_command_groups, cli
from tidings.persistence.setup import TABLE_SETS, create_tables

_register_command_groups()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_db_init_creates_every_set_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    runner = CliRunner()
    for _ in range(2):  # idempotent
        result = runner.invoke(cli, ["db", "init", "--url", url])
        assert result.exit_code == 0, result.output
    assert "outbox, eventstore, sagas, inbox, keys" in result.output
    from sqlalchemy import create_engine

    engine = create_engine(url)
    found = tables(engine)
    engine.dispose()
    assert {
        "tidings_outbox",
        "tidings_events",
        "tidings_saga_instances",
        "tidings_saga_timeouts",
        "tidings_dead_letters",
    } <= found


def test_db_init_only_and_bad_names(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    runner = CliRunner()
    result = runner.invoke(cli, ["db", "init", "--url", url, "--only", "sagas"])
    assert result.exit_code == 0 and "ready: sagas" in result.output
    bad = runner.invoke(cli, ["db", "init", "--url", url, "--only", "sagas,nope"])
    assert bad.exit_code == 2 and "unknown table set(s) ['nope']" in bad.output


def test_create_tables_on_postgres(pg_engine: Engine) -> None:
    assert create_tables(pg_engine) == list(TABLE_SETS)
    assert create_tables(pg_engine) == list(TABLE_SETS)  # again: nothing to do, no error
    assert {"tidings_outbox", "tidings_events", "tidings_saga_instances"} <= tables(pg_engine)


def test_unknown_set_is_a_clear_error(tmp_path: Path) -> None:
    from tidings import ConfigurationError
    from tidings.persistence.sqlite import sqlite_engine

    with pytest.raises(ConfigurationError, match="choose from"):
        create_tables(sqlite_engine(tmp_path / "x.db"), ["everything"])
