"""``tidings schema export`` and ``tidings worker`` through the real command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tidings.cli.main import _register_command_groups, cli

from . import integration_app

ROOT = Path(__file__).resolve().parents[2]
#: The module as this test run imported it (its name depends on pytest's import mode); loading
#: it under another name would declare its integration events twice.
APP = integration_app.__name__


def invoke(*args: str) -> tuple[int, str]:
    _register_command_groups()
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_schema_export_writes_every_document(tmp_path: Path) -> None:
    code, output = invoke("schema", "export", "--app", f"{APP}:worker", "--out", str(tmp_path))
    assert code == 0, output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "asyncapi.json",
        "public.orders.OrderOpened.v1.schema.json",
        "public.orders.OrderOpened.v2.schema.json",
    ]
    document = json.loads((tmp_path / "asyncapi.json").read_text())
    assert document["asyncapi"] == "3.0.0"
    assert "wrote" in output


def test_schema_export_json_accepts_a_translator_or_a_factory() -> None:
    for app in (
        f"{APP}:orders_bus",
        f"{APP}:build_worker",
    ):
        code, output = invoke("schema", "export", "--app", app, "--json")
        assert code == 0, output
        assert "asyncapi.json" in json.loads(output)


def test_bad_app_arguments_say_what_is_wrong() -> None:
    code, output = invoke("schema", "export", "--app", "nocolon", "--json")
    assert code != 0 and "expected module:attribute" in output
    code, output = invoke("schema", "export", "--app", "no.such.module:x", "--json")
    assert code != 0 and "cannot import 'no.such.module'" in output
    code, output = invoke("schema", "export", "--app", f"{APP}:nope", "--json")
    assert code != 0 and "has no attribute 'nope'" in output
    code, output = invoke("schema", "export", "--app", f"{APP}:ORDERS", "--json")
    assert code != 0 and "has no translators" in output
    code, output = invoke("schema", "export", "--app", f"{APP}:orders_bus")
    assert code != 0 and "--out" in output
    code, output = invoke("worker", "--app", f"{APP}:orders_bus")
    assert code != 0 and "not a tidings.brokers.worker.Worker" in output


@pytest.mark.parametrize("flag", ["--gc-tuning", "--no-gc-tuning"])
def test_worker_runs_until_sigterm_and_stops_cleanly(flag: str) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidings.cli.main",
            "worker",
            "--app",
            f"{APP}:worker",
            flag,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
    )
    assert process.stdout is not None
    first_line = process.stdout.readline()
    assert "1 subscription(s)" in first_line
    # Tuned once the application is loaded (tidings.interpreter), unless asked not to.
    assert ("garbage collector tuned:" in first_line) is (flag == "--gc-tuning"), first_line
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "stopped" in out
