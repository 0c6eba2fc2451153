"""``python -m ordering``: run the demo, the API, or the relays.

python -m ordering demo [--json]
python -m ordering api --url URL [--port 8000] [--bus URL]  # API + relays in one process
python -m ordering relay --url URL [--bus URL]              # relays and saga timeouts only
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ordering")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the end-to-end scenario on SQLite")
    demo.add_argument("--json", action="store_true")
    demo.add_argument("--database", default=None)
    api = commands.add_parser("api", help="serve the HTTP API (relays in the same process)")
    api.add_argument("--url", required=True, help="SQLAlchemy database URL")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--no-relays", action="store_true", help="run relays elsewhere")
    relay = commands.add_parser("relay", help="deliver after-commit work (relays, timeouts)")
    relay.add_argument("--url", required=True)
    for relaying in (api, relay):
        relaying.add_argument(
            "--bus",
            default=None,
            help="broker URL (amqp://, nats://, redis://): publish integration events",
        )
    relay.add_argument("--node", default=None, help="stable relay name (restart takes over)")
    init = commands.add_parser("init", help="create the tables (idempotent)")
    init.add_argument("--url", required=True)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from ordering.scenario import main as run_demo

        return run_demo(args.database, as_json=args.json)

    from ordering.bootstrap import from_environment
    from ordering.engines import engine_for

    app = from_environment(
        engine_for(args.url), bus_url=getattr(args, "bus", None), node=getattr(args, "node", None)
    )
    if args.command == "init":
        app.create_tables()
        return 0
    if args.command == "api":
        import uvicorn

        from ordering.api import create_api

        uvicorn.run(create_api(app, run_relays=not args.no_relays), host=args.host, port=args.port)
        return 0
    from tidings.cli.signals import StopSignals

    # The handler only records the signal (one that took a lock, as setting an Event does,
    # could deadlock on its own thread); this thread waits for it, then stops the app.
    signals = StopSignals()
    signals.install()
    app.start()
    signals.wait()
    app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
