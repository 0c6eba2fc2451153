"""SQLite engines configured for tidings: WAL, a busy timeout, and ``BEGIN IMMEDIATE``.

Python's sqlite3 module begins transactions lazily and as ``DEFERRED``; a unit of work that reads
and then writes can then fail with ``SQLITE_BUSY`` when two writers race to upgrade their locks.
Taking the write lock at ``BEGIN`` (``IMMEDIATE``) makes concurrent writers queue on the busy
timeout instead. WAL lets readers (the relay, projections) run while a writer commits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

#: Execution option for connections that only read: ``conn.execution_options(**{READ_ONLY:
#: True})`` makes their transactions begin DEFERRED instead of IMMEDIATE.
READ_ONLY = "tidings_read_only"


def _configure(sync_engine: Engine, busy_timeout_ms: int, synchronous: Synchronous) -> None:
    @event.listens_for(sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def on_begin(connection: Any) -> None:
        # On the driver's cursor: exec_driver_sql's execution machinery costs several times
        # what the statement does, once per transaction.
        # A connection marked read-only (execution option READ_ONLY) begins DEFERRED: a reader
        # takes no write lock, so it neither waits for writers nor holds them up.
        statement = (
            "BEGIN" if connection.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
        )
        cursor = connection.connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()


def sqlite_url(path: str | Path, *, asyncio: bool = False) -> str:
    driver = "sqlite+aiosqlite" if asyncio else "sqlite+pysqlite"
    return f"{driver}:///{Path(path)}"


def sqlite_engine(
    path: str | Path,
    *,
    busy_timeout_ms: int = 30_000,
    synchronous: Synchronous = "FULL",
    **engine_kwargs: Any,
) -> Engine:
    """A synchronous engine on the SQLite file at ``path`` (created if missing)."""
    engine = create_engine(sqlite_url(path), **engine_kwargs)
    _configure(engine, busy_timeout_ms, synchronous)
    return engine


def async_sqlite_engine(
    path: str | Path,
    *,
    busy_timeout_ms: int = 30_000,
    synchronous: Synchronous = "FULL",
    **engine_kwargs: Any,
) -> AsyncEngine:
    """An asyncio engine (aiosqlite) on the SQLite file at ``path``."""
    engine = create_async_engine(sqlite_url(path, asyncio=True), **engine_kwargs)
    _configure(engine.sync_engine, busy_timeout_ms, synchronous)
    return engine
