"""Reaching the real servers that integration tests need.

Outside CI a test whose server is unreachable is *skipped*, with the reason. With ``CI=true`` it
*fails* instead: CI must never go green by skipping what it was meant to check.
"""

from __future__ import annotations

import os
import socket

import pytest

POSTGRES_URL = os.environ.get(
    "TIDINGS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
RABBITMQ_URL = os.environ.get("TIDINGS_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("TIDINGS_TEST_NATS", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("TIDINGS_TEST_REDIS", "redis://127.0.0.1:6379/0")

_PORTS = {
    "postgres": ("127.0.0.1", 5432),
    "rabbitmq": ("127.0.0.1", 5672),
    "nats": ("127.0.0.1", 4222),
    "redis": ("127.0.0.1", 6379),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(service: str) -> None:
    """Skip (or, in CI, fail) the calling test if ``service`` is not reachable."""
    host, port = _PORTS[service]
    if reachable(host, port):
        return
    reason = f"{service} is not reachable at {host}:{port}"
    if in_ci():
        pytest.fail(f"{reason} (CI=true: service tests must not be skipped)")
    pytest.skip(reason)
