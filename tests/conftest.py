"""Shared fixtures: real servers, isolated per test run, cleaned up afterwards.

PostgreSQL tests get a schema of their own (``tidings_test_<random>``), dropped at the end of
the session. Engines set ``search_path`` to it, so tables created by tests never collide with
another run's.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tidings.persistence.sqlite import async_sqlite_engine, sqlite_engine
from tidings.testing.services import POSTGRES_URL, require

RUN_ID = uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def run_id() -> str:
    """A token unique to this test run, for naming queues, streams, key prefixes."""
    return RUN_ID


def _with_search_path(engine: Engine, schema: str) -> Engine:
    @event.listens_for(engine, "connect")
    def set_search_path(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        cursor = dbapi_connection.cursor()
        cursor.execute(f'SET search_path TO "{schema}"')
        cursor.close()
        dbapi_connection.autocommit = autocommit

    return engine


@contextmanager
def fresh_schema(schema: str) -> Iterator[str]:
    """PostgreSQL schema ``schema``, created, then dropped with everything in it."""
    require("postgres")
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    """A PostgreSQL schema private to this test run."""
    with fresh_schema(f"tidings_test_{RUN_ID}") as schema:
        yield schema


@pytest.fixture
def other_pg_schema(pg_schema: str) -> Iterator[str]:
    """A second schema beside the run's, as another service's in the same database."""
    with fresh_schema(f"{pg_schema}_b") as schema:
        yield schema


@pytest.fixture
def pg_engine(pg_schema: str) -> Iterator[Engine]:
    """A sync engine on this run's schema; every table is dropped after the test."""
    engine = _with_search_path(create_engine(POSTGRES_URL), pg_schema)
    try:
        yield engine
    finally:
        _drop_all_tables(engine, pg_schema)
        engine.dispose()


@pytest.fixture
async def pg_async_engine(pg_schema: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(POSTGRES_URL)
    _with_search_path(engine.sync_engine, pg_schema)
    try:
        yield engine
    finally:
        await engine.dispose()
        sync = _with_search_path(create_engine(POSTGRES_URL), pg_schema)
        _drop_all_tables(sync, pg_schema)
        sync.dispose()


def _drop_all_tables(engine: Engine, schema: str) -> None:
    with engine.begin() as conn:
        names = conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}
        ).scalars()
        for name in list(names):
            quoted = name.replace('"', '""')  # tests may name tables with quotes in them
            conn.execute(text(f'DROP TABLE IF EXISTS "{schema}"."{quoted}" CASCADE'))


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "tidings.sqlite"


@pytest.fixture
def sqlite_sync_engine(sqlite_path: Path) -> Iterator[Engine]:
    engine = sqlite_engine(sqlite_path)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
async def sqlite_async_engine(sqlite_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = async_sqlite_engine(sqlite_path)
    try:
        yield engine
    finally:
        await engine.dispose()
