"""Inserts marked with ``bulk_insert`` go in as one binary COPY on PostgreSQL when they carry
several rows, and behave exactly like ``executemany`` (SQLite keeps it): the same rows and
defaults, the same errors, nothing left behind by a failed batch, and event-store conflicts
still reported as concurrency errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    insert,
    select,
)
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import Handlers, Timing
from tidings.errors import ConcurrencyError
from tidings.eventsourcing import (
    AsyncEventSourcedRepository,
    AsyncEventStore,
    EventStore,
    EventStoreParticipant,
    default_schema,
)
from tidings.outbox import OutboxParticipant
from tidings.outbox import metadata as outbox_metadata
from tidings.outbox import tables as outbox_tables
from tidings.persistence import direct
from tidings.persistence.bulk import bulk_insert
from tidings.persistence.direct import execute_direct
from tidings.persistence.sql import AsyncSqlUnitOfWork
from tidings.persistence.values import as_utc
from tidings.testing.store_contract import ContractAccount, Deposited, Opened, fresh_id

loaded = Table(
    "bulk_copy_rows",
    MetaData(),
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("key", Uuid(), nullable=False, unique=True),
    Column("name", String(50), nullable=True),
    Column("note", Text(), nullable=False, server_default="none given"),
    Column("count", BigInteger(), nullable=False),
    Column("small", Integer(), nullable=True),
    Column("flag", Boolean(), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("body", LargeBinary(), nullable=False),
)
BULK = bulk_insert(insert(loaded))


@pytest.fixture
def table(engine: Engine) -> Engine:
    loaded.metadata.create_all(engine)
    return engine


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many rows each COPY carried."""
    seen: list[int] = []
    real = direct.run_copy

    def counting(cursor: Any, form: Any, rows: Any) -> None:
        seen.append(len(rows))
        real(cursor, form, rows)

    async def counting_async(cursor: Any, form: Any, rows: Any) -> None:
        seen.append(len(rows))
        await real_async(cursor, form, rows)

    real_async = direct.run_copy_async
    monkeypatch.setattr(direct, "run_copy", counting)
    monkeypatch.setattr(direct, "run_copy_async", counting_async)
    return seen


def on_postgres(engine: Engine, copied: list[int]) -> list[int]:
    """The COPY sizes expected: ``copied`` on PostgreSQL, none on SQLite (executemany)."""
    return copied if engine.dialect.name == "postgresql" else []


def row(n: int, **changes: Any) -> dict[str, Any]:
    values = {
        "key": uuid.uuid4(),
        "name": None if n % 2 else f"name {n}",
        "count": 2**40 + n,
        "small": None if n % 3 == 0 else n,
        "flag": n % 2 == 0,
        "at": datetime(2026, 11, 24, 8, n % 60, tzinfo=UTC),
        "body": bytes([n % 256]) * n + b"\x00\xff",
    }
    values.update(changes)
    return values


def stored(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(loaded).order_by(loaded.c.id)).mappings().all()
    # SQLite gives datetimes back without their time zone (UTC).
    return [dict(r) | {"at": as_utc(r["at"])} for r in rows]


def test_many_rows_land_as_executemany_would_put_them(table: Engine, copies: list[int]) -> None:
    rows = [row(n) for n in range(1, 40)]
    last = row(40)
    with table.begin() as conn:
        execute_direct(conn, BULK, rows, fetch=False)
        execute_direct(conn, BULK, last, fetch=False)  # one row: a plain INSERT
    # The omitted columns took their defaults: the key's sequence and the note's default.
    given = [*rows, last]
    assert stored(table) == [{"id": n, "note": "none given", **r} for n, r in enumerate(given, 1)]
    assert copies == on_postgres(table, [39])


def test_a_violation_is_an_integrity_error_and_the_batch_leaves_nothing(
    table: Engine, copies: list[int]
) -> None:
    taken = uuid.uuid4()
    with table.begin() as conn:
        execute_direct(conn, BULK, [row(1, key=taken), row(2)], fetch=False)
    with pytest.raises(IntegrityError) as caught, table.begin() as conn:
        execute_direct(conn, BULK, [row(3), row(4), row(5, key=taken)], fetch=False)
    assert "bulk_copy_rows" in str(caught.value.statement)
    assert [r["id"] for r in stored(table)] == [1, 2]
    # A connection whose COPY failed goes back to the pool usable.
    with table.begin() as conn:
        execute_direct(conn, BULK, [row(6), row(7)], fetch=False)
    assert len(stored(table)) == 4
    assert copies == on_postgres(table, [2, 3, 2])


def test_values_copy_would_send_differently_keep_executemany(
    table: Engine, copies: list[int]
) -> None:
    # A naive datetime: the INSERT lets the database read it in its session time zone.
    with table.begin() as conn:
        execute_direct(conn, BULK, [row(1), row(2, at=datetime(2026, 1, 1))], fetch=False)
    assert len(stored(table)) == 2
    if table.dialect.name == "postgresql":
        # A UUID as text: the INSERT's cast accepts it, as it always did.
        text_key = uuid.uuid4()
        with table.begin() as conn:
            execute_direct(conn, BULK, [row(3), row(4, key=str(text_key))], fetch=False)
        assert stored(table)[-1]["key"] == text_key
        # Values the columns cannot take fail with the database's own error naming them.
        with pytest.raises(DataError, match="bigint"), table.begin() as conn:
            execute_direct(conn, BULK, [row(5), row(6, count="many")], fetch=False)
        with pytest.raises(DataError, match="out of range"), table.begin() as conn:
            execute_direct(conn, BULK, [row(7), row(8, small=2**31)], fetch=False)
        assert len(stored(table)) == 4
    assert copies == []


def test_a_stale_save_of_many_events_is_a_concurrency_error(
    engine: Engine, copies: list[int]
) -> None:
    store = EventStore(engine, cache=None)
    account_id = fresh_id()
    opened = ContractAccount.open(account_id, "bulk")
    opened.deposit(1)
    store.save(opened)
    stale = store.load(ContractAccount, account_id)
    fresh = store.load(ContractAccount, account_id)
    fresh.deposit(2)
    fresh.deposit(3)
    store.save(fresh)
    stale.deposit(4)
    stale.deposit(5)
    # The version check is the table's constraint, met by the COPY on PostgreSQL.
    with pytest.raises(ConcurrencyError) as caught:
        store.save(stale)
    assert caught.value.stream_id == f"ContractAccount-{account_id}"
    assert len(store.read_stream(caught.value.stream_id)) == 4, "nothing stale was stored"
    assert copies == on_postgres(engine, [2, 2, 2])


async def test_asyncio_copies_on_postgres(pg_async_engine: AsyncEngine, copies: list[int]) -> None:
    await check_asyncio_bulk_inserts(pg_async_engine)
    assert copies == [3, 3, 2], "events and outbox rows of the unit of work; the stale save"


async def test_asyncio_on_sqlite_keeps_executemany(
    sqlite_async_engine: AsyncEngine, copies: list[int]
) -> None:
    await check_asyncio_bulk_inserts(sqlite_async_engine)
    assert copies == []


async def check_asyncio_bulk_inserts(engine: AsyncEngine) -> None:
    """An asyncio unit of work writes events and outbox rows; a stale asyncio save conflicts."""
    await default_schema.create_all_async(engine)
    async with engine.begin() as conn:
        await conn.run_sync(outbox_metadata.create_all)
    handlers = Handlers()
    for event_type in (Opened, Deposited):
        handlers.add(event_type, lambda event: None, when=Timing.AFTER_COMMIT, name="bulk")
    participant = EventStoreParticipant()
    uow = AsyncSqlUnitOfWork(engine, participants=[participant, OutboxParticipant(handlers)])
    account_id = fresh_id()
    async with uow:
        account = ContractAccount.open(account_id, "bulk")
        account.deposit(1)
        account.deposit(2)
        AsyncEventSourcedRepository(uow, participant).add(account)
        await uow.commit()
    store = AsyncEventStore(engine, cache=None)
    stale = await store.load(ContractAccount, account_id)
    fresh = await store.load(ContractAccount, account_id)
    fresh.deposit(3)
    await store.save(fresh)
    stale.deposit(4)
    stale.deposit(5)
    with pytest.raises(ConcurrencyError) as caught:
        await store.save(stale)
    assert caught.value.actual_version == 4
    stream = f"ContractAccount-{account_id}"
    assert [e.event.stream_version for e in await store.read_stream(stream)] == [1, 2, 3, 4]
    async with engine.connect() as conn:
        outbox = (await conn.execute(select(outbox_tables.outbox.c.stream_version))).scalars()
        assert sorted(outbox) == [1, 2, 3]
