"""Child process: a relay that runs until killed (tests/outbox/test_crash.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app import engine_from_env, make_config

from tidings.outbox import Relay


def main() -> None:
    engine = engine_from_env()
    relay = Relay(make_config(engine), node=sys.argv[1])
    relay.run()


if __name__ == "__main__":
    main()
