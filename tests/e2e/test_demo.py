"""The command line as a user runs it: a subprocess, exit codes, and the demo's own checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tidings

TIDINGS = [sys.executable, "-m", "tidings.cli.main"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TIDINGS, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert tidings.__version__ in result.stdout


def test_help_lists_the_demo_command() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout
    demo_help = run("demo", "--help")
    assert demo_help.returncode == 0, demo_help.stderr
    assert "--json" in demo_help.stdout


def test_demo_prints_a_readable_timeline() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMMITTED order-1 and buyer alice together" in result.stdout
    assert "ROLLED BACK: order order-2 looks fraudulent" in result.stdout
    assert "[FAIL]" not in result.stdout
    assert result.stdout.count("[ok]") == 4


def test_demo_json_reports_every_check_passing(tmp_path: Path) -> None:
    database = tmp_path / "demo.sqlite"
    result = run("demo", "--json", "--database", str(database))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["checks"]
    assert all(report["checks"].values()), report["checks"]
    handled = [entry for entry in report["timeline"] if "event" in entry]
    started = next(e for e in handled if e["event"] == "demo.OrderStarted")
    created = next(e for e in handled if e["event"] == "demo.BuyerCreated")
    # The buyer was created while handling the order's event: caused by it, same correlation.
    assert created["causation_id"] == started["event_id"]
    assert created["correlation_id"] == started["correlation_id"]
    assert database.exists()


def test_unknown_command_fails() -> None:
    result = run("no-such-command")
    assert result.returncode != 0


def test_demo_can_run_twice_on_the_same_database(tmp_path: Path) -> None:
    database = str(tmp_path / "demo.sqlite")
    for _ in range(2):
        result = run("demo", "--json", "--database", database)
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["ok"] is True
