"""Operators inspect an event-sourced app, whose events table is its outbox, with the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from ordering import service
from ordering.bootstrap import OrderingApp
from ordering.ports import Notifier
from tidings.cli.main import _register_command_groups, cli
from tidings.persistence.sqlite import sqlite_engine

_register_command_groups()

BOOK = {"sku": "book", "quantity": 1, "unit_price": "20.00"}


def test_status_and_dead_letters_of_the_events_log(tmp_path: Path) -> None:
    path = tmp_path / "ordering.sqlite"
    app = OrderingApp(sqlite_engine(path), notifier=Notifier(down=True), listen=False)
    app.create_tables()
    service.add_stock(app, "book", 5)
    service.place_order(app, "o-1", "bob", [BOOK])
    service.confirm_order(app, "o-1")
    deadline = time.monotonic() + 30
    while not app.dead_letters().find(subscriber="notifications"):
        app.run_until_idle()
        assert time.monotonic() < deadline
        time.sleep(0.02)

    runner = CliRunner()
    url = f"sqlite:///{path}"
    listed = runner.invoke(cli, ["dlq", "list", "--url", url, "--log", "tidings_events", "--json"])
    assert listed.exit_code == 0, listed.output
    [letter] = json.loads(listed.output)
    assert letter["subscriber"] == "notifications"
    assert letter["event_type"] == "ordering.OrderConfirmed"

    shown = runner.invoke(
        cli, ["dlq", "show", str(letter["id"]), "--url", url, "--log", "tidings_events"]
    )
    assert shown.exit_code == 0 and "ServiceDown" in shown.output

    status = runner.invoke(cli, ["status", "--url", url, "--log", "tidings_events", "--json"])
    assert status.exit_code == 0, status.output
    report = json.loads(status.output)
    assert report["log"] == "tidings_events" and report["dead_letters"] == 1

    # The outbox log (the default) holds none of these.
    default = runner.invoke(cli, ["dlq", "list", "--url", url, "--json"])
    assert json.loads(default.output) == []
    missing = runner.invoke(cli, ["status", "--url", url, "--log", "no_such_table"])
    assert missing.exit_code != 0
    app.stop()
