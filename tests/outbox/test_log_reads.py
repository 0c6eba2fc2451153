"""Reads of a log after a checkpoint, on SQLite: they seek in the primary key.

On SQLite ``tx`` is always 0 and writers commit in position order, so a page after a checkpoint
is ``position > checkpoint`` in position order, which SQLite answers from the rowid. The
``(tx, position)`` condition PostgreSQL needs made SQLite walk its index from the first row on
every read. (PostgreSQL's plans are checked in ``test_postgres.py``.)
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, MetaData

from tidings.eventsourcing import EventStoreSchema
from tidings.eventsourcing.plans import log_page_statement
from tidings.outbox import RelayConfig, create_tables
from tidings.outbox.delivery import Follower

from .app import ledger_handlers


def _plan(engine: Engine, statement: Any, params: dict[str, Any]) -> list[str]:
    """SQLite's query plan for ``statement`` (the detail of each step)."""
    compiled = statement.compile(engine)
    positional = tuple({**compiled.params, **params}[name] for name in compiled.positiontup)
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", positional)
        return [str(row[3]) for row in rows]


def test_a_relay_page_seeks_to_the_checkpoint(sqlite_sync_engine: Engine) -> None:
    create_tables(sqlite_sync_engine)
    config = RelayConfig(sqlite_sync_engine, ledger_handlers("ledger"))
    statement = Follower(config, clock=time.monotonic)._read_statement
    plan = _plan(sqlite_sync_engine, statement, {"after_tx": 0, "after_position": 5})
    assert plan == ["SEARCH tidings_outbox USING INTEGER PRIMARY KEY (rowid>?)"], plan


def test_an_event_store_page_seeks_to_the_checkpoint(sqlite_sync_engine: Engine) -> None:
    schema = EventStoreSchema(MetaData())
    schema.create_all(sqlite_sync_engine)
    for names, prefix in [(None, None), (["a.Type"], None), (None, "order-")]:
        statement = log_page_statement(schema, "sqlite", names, prefix)
        params = {"after_tx": 0, "after_position": 5, "page_limit": 100}
        plan = _plan(sqlite_sync_engine, statement, params)
        # The primary key, or with a type filter the (event_type, position) index: a seek
        # past the checkpoint either way, and no sort.
        assert plan[0].startswith("SEARCH tidings_events USING"), plan
        assert "rowid>?" in plan[0] or "position>?" in plan[0], plan
        assert not any("TEMP B-TREE" in step for step in plan), plan
