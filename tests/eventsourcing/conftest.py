"""Event stores on both real databases: SQLite files and this run's PostgreSQL schema."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from tidings.eventsourcing import EventStore, default_schema
from tidings.persistence.sqlite import sqlite_engine
from tidings.testing.services import POSTGRES_URL


@dataclass(frozen=True)
class SqliteOpener:
    """Opens the same SQLite store again (in another process)."""

    path: Path

    def __call__(self) -> EventStore:
        return EventStore(sqlite_engine(self.path), cache=None)


@dataclass(frozen=True)
class PostgresOpener:
    """Opens the same PostgreSQL store again, on this run's schema."""

    schema: str

    def engine(self) -> Engine:
        return create_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={self.schema}"})

    def __call__(self) -> EventStore:
        return EventStore(self.engine(), cache=None)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine(backend: str, request: pytest.FixtureRequest) -> Engine:
    """A sync engine on a fresh SQLite file or on this run's PostgreSQL schema."""
    if backend == "sqlite":
        engine = request.getfixturevalue("sqlite_sync_engine")
    else:
        engine = request.getfixturevalue("pg_engine")
    default_schema.create_all(engine)
    return engine


@pytest.fixture
def opener(backend: str, request: pytest.FixtureRequest) -> SqliteOpener | PostgresOpener:
    if backend == "sqlite":
        return SqliteOpener(request.getfixturevalue("sqlite_path"))
    return PostgresOpener(request.getfixturevalue("pg_schema"))
