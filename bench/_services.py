"""Shared by benches that need a server: skip cleanly (exit 77) when it is unreachable.

``run_all.py`` reports exit status 77 as *skipped*. Usage, first thing in a bench's ``main``::

    from _services import require
    require("postgres")
"""

from __future__ import annotations

import sys

from tidings.testing.services import reachable

SKIP = 77

SERVERS = {
    "postgres": ("127.0.0.1", 5432),
    "rabbitmq": ("127.0.0.1", 5672),
    "nats": ("127.0.0.1", 4222),
    "redis": ("127.0.0.1", 6379),
}


def require(*services: str) -> None:
    for service in services:
        host, port = SERVERS[service]
        if not reachable(host, port):
            print(f"skipped: {service} is not reachable at {host}:{port}")
            sys.exit(SKIP)
