"""The operator's commands: db init, relay, dlq, status (CliRunner, and one real process)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tidings.cli.main import _register_command_groups, cli

from . import app
from .app import deposit, effects, make_config
from .conftest import Store

_register_command_groups()
APP = f"{app.__name__}:make_config"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_db_init_is_idempotent(store: Store) -> None:
    first = run("db", "init", "--url", store.url)
    second = run("db", "init", "--url", store.url)
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert "ready" in second.output


def test_relay_status_and_dead_letters_end_to_end(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(store.engine)
    for seq in range(4):
        deposit(config, f"acc-{seq % 2}", 1, seq)

    before = json.loads(run("status", "--url", store.url, "--json").output)
    assert before["backlog"] == 4

    monkeypatch.setattr(app, "BROKEN_SEQS", {2})
    relayed = run("relay", "--url", store.url, "--app", APP, "--once", "--node", "cli")
    assert relayed.exit_code == 0, relayed.output
    assert sorted(e.seq for e in effects(store.engine)) == [0, 1, 3]

    after = json.loads(run("status", "--url", store.url, "--json").output)
    assert after["backlog"] == 0
    assert after["dead_letters"] == 1
    assert after["subscribers"][0]["dead_letters"] == 1
    human = run("status", "--url", store.url).output
    assert "backlog 0" in human
    assert "1 failed" in human

    listed = json.loads(run("dlq", "list", "--url", store.url, "--json").output)
    assert len(listed) == 1
    letter = listed[0]
    assert letter["subscriber"] == "ledger"
    assert letter["event_type"] == "tests.outbox.Deposited"
    assert letter["attempts"] == 2
    assert "LedgerBug" in letter["exception_type"]
    for flag, value, expected in [
        ("--subscriber", "ledger", 1),
        ("--subscriber", "nobody", 0),
        ("--event-type", "tests.outbox.Deposited", 1),
        ("--event-type", "Other", 0),
        ("--stream", "Account-acc-0", 1),
        ("--stream", "Account-acc-1", 0),
        ("--since", "2000-01-01", 1),
        ("--until", "2000-01-01T00:00:00+00:00", 0),
    ]:
        found = json.loads(run("dlq", "list", "--url", store.url, flag, value, "--json").output)
        assert len(found) == expected, (flag, value)
    assert "LedgerBug" in run("dlq", "list", "--url", store.url).output

    shown = json.loads(run("dlq", "show", "--url", store.url, str(letter["id"]), "--json").output)
    assert shown["payload"] == {"text": '{"account":"acc-0","amount":1,"seq":2}'}
    assert "Traceback" in shown["traceback"]
    assert "LedgerBug" in run("dlq", "show", "--url", store.url, str(letter["id"])).output

    still_broken = run("dlq", "replay", "--url", store.url, "--app", APP, str(letter["id"]))
    assert still_broken.exit_code == 1
    assert "failed again" in still_broken.output

    monkeypatch.setattr(app, "BROKEN_SEQS", set())
    replayed = run("dlq", "replay", "--url", store.url, "--app", APP, str(letter["id"]), "--json")
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(replayed.output)[0]["replayed"] is True
    assert sorted(e.seq for e in effects(store.engine)) == [0, 1, 2, 3]
    assert json.loads(run("dlq", "list", "--url", store.url, "--json").output) == []


def test_discard_and_clear_errors(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(store.engine)
    deposit(config, "acc-0", 1, seq=7)
    monkeypatch.setattr(app, "BROKEN_SEQS", {7})
    run("relay", "--url", store.url, "--app", APP, "--once")
    [letter] = json.loads(run("dlq", "list", "--url", store.url, "--json").output)

    missing = run("dlq", "show", "--url", store.url, "999999")
    assert missing.exit_code == 1
    assert "no dead letter with id 999999" in missing.output
    discarded = run("dlq", "discard", "--url", store.url, str(letter["id"]))
    assert discarded.exit_code == 0, discarded.output
    assert json.loads(run("dlq", "list", "--url", store.url, "--json").output) == []
    again = run("dlq", "discard", "--url", store.url, str(letter["id"]))
    assert again.exit_code == 1
    assert effects(store.engine) == []


def test_bad_arguments_are_named(store: Store) -> None:
    no_app = run("relay", "--url", store.url, "--once")
    assert no_app.exit_code != 0
    assert "--app" in no_app.output
    bad_app = run("relay", "--url", store.url, "--app", "no_such_module_xyz:thing", "--once")
    assert "cannot import 'no_such_module_xyz'" in bad_app.output
    bad_attr = run("relay", "--url", store.url, "--app", f"{app.__name__}:nothing", "--once")
    assert "has no attribute 'nothing'" in bad_attr.output
    wrong_type = run("relay", "--url", store.url, "--app", f"{app.__name__}:BROKEN", "--once")
    assert "expected a RelayConfig" in wrong_type.output
    bad_url = run("status", "--url", "not a url")
    assert bad_url.exit_code != 0
    assert "not a database URL" in bad_url.output
    memory = run("status", "--url", "sqlite://")
    assert "in-memory SQLite" in memory.output
    bad_time = run("dlq", "list", "--url", store.url, "--since", "yesterday")
    assert "not an ISO date/time: 'yesterday'" in bad_time.output


def test_relay_as_a_real_process(store: Store) -> None:
    config = make_config(store.engine)
    for seq in range(3):
        deposit(config, "acc-0", 1, seq)
    here = Path(__file__).resolve().parent
    env = {**store.env, "PYTHONPATH": str(here)}
    command = [sys.executable, "-m", "tidings.cli.main"]
    done = subprocess.run(
        [*command, "relay", "--url", store.url, "--app", "app:make_config", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "nothing left to deliver" in done.stdout
    assert [e.seq for e in effects(store.engine)] == [0, 1, 2]
    report = subprocess.run(
        [*command, "status", "--url", store.url, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(report.stdout)["backlog"] == 0


@pytest.mark.parametrize("flag", ["--gc-tuning", "--no-gc-tuning"])
def test_relay_follows_until_sigterm_with_its_collector_tuned_unless_asked_not_to(
    store: Store, flag: str
) -> None:
    config = make_config(store.engine)
    deposit(config, "acc-0", 1, 0)
    here = Path(__file__).resolve().parent
    command = [sys.executable, "-m", "tidings.cli.main", "relay", "--url", store.url]
    process = subprocess.Popen(
        [*command, "--app", "app:make_config", flag],
        env={**store.env, "PYTHONPATH": str(here)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        started = process.stderr.readline()
        assert "following" in started
        tuned = "garbage collector tuned:" in started
        assert tuned is (flag == "--gc-tuning"), started
        deadline = time.monotonic() + 60
        while not effects(store.engine) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e.seq for e in effects(store.engine)] == [0]  # it does deliver meanwhile
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
