"""Run every benchmark in ``bench/``, one subprocess each, with this interpreter.

Conventions every ``bench/*.py`` follows:

* it runs as a script, accepts ``--quick``, and finishes in under about two minutes by default;
* if a server it needs is unreachable, it prints why and exits with :data:`SKIP` (77, the
  automake convention); ``run_all`` reports it as skipped, not failed;
* any other non-zero exit is a crash: ``run_all`` carries on with the other benches, then exits
  non-zero.

    python bench/run_all.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SKIP = 77
TIMEOUT_SECONDS = (
    600  # well past the slowest full run (eventstore, about 3 min): a bench past it is hung
)

HERE = Path(__file__).resolve().parent


def benches(only: list[str]) -> list[Path]:
    found = sorted(
        path
        for path in HERE.glob("*.py")
        if path.name != Path(__file__).name and path.stem[0] != "_"
    )
    if only:
        found = [path for path in found if path.stem in only]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every bench")
    parser.add_argument("--only", nargs="*", default=[], help="run only these benches (stems)")
    args = parser.parse_args()

    outcomes: dict[str, str] = {}
    for path in benches(args.only):
        command = [sys.executable, str(path), *(["--quick"] if args.quick else [])]
        print(f"\n=== {path.name} {'=' * max(3, 70 - len(path.name))}", flush=True)
        started = time.monotonic()
        try:
            completed = subprocess.run(command, timeout=TIMEOUT_SECONDS, check=False)
            code = completed.returncode
        except subprocess.TimeoutExpired:
            print(f"--- {path.name} did not finish within {TIMEOUT_SECONDS} s", flush=True)
            code = -1
        elapsed = time.monotonic() - started
        if code == 0:
            outcomes[path.name] = f"ok ({elapsed:.0f} s)"
        elif code == SKIP:
            outcomes[path.name] = "skipped (see its output for why)"
        else:
            outcomes[path.name] = f"CRASHED (exit {code})"

    print("\n=== summary " + "=" * 62)
    for name, outcome in outcomes.items():
        print(f"  {name:<28} {outcome}")
    crashed = [name for name, outcome in outcomes.items() if outcome.startswith("CRASHED")]
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
