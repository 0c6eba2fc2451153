"""``make demo`` runs ``python -m ordering demo``: it must exit 0 and print its checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples")}
    return subprocess.run(
        [sys.executable, "-m", "ordering", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def test_demo_passes_and_prints_the_causation_timeline() -> None:
    done = run("demo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all good" in done.stdout
    assert "└─ ordering.commands.CancelOrder" in done.stdout
    assert "[FAIL]" not in done.stdout


def test_demo_json_is_machine_readable() -> None:
    done = run("demo", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert all(report["checks"].values())
    assert {row["type"] for row in report["timeline"]} >= {
        "ordering.OrderCancelled",
        "payments.PaymentRefunded",
        "loyalty.LoyaltyThresholdReached",
        "support.ResponseDeadlineSet",
    }
