"""The aggregate cache and one-statement units of work, on SQLite and PostgreSQL.

What must hold with the cache on (the default): a load gives exactly what a full replay gives,
even when another writer appended meanwhile; a unit of work that fails puts nothing back; the
caller's object is never the cached one. And a unit of work whose whole transaction is one
statement runs it as a transaction of its own without leaving the connection in that mode.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.errors import ConcurrencyError, StoreError, StreamNotFound
from tidings.eventsourcing import (
    AsyncEventSourcedRepository,
    EventSourcedRepository,
    EventStore,
    EventStoreParticipant,
    default_schema,
)
from tidings.eventsourcing.cache import AggregateCache
from tidings.persistence.sql import AsyncSqlUnitOfWork, SqlUnitOfWork
from tidings.persistence.sqlite import sqlite_engine
from tidings.testing.services import POSTGRES_URL
from tidings.testing.store_contract import ContractAccount, Deposited, fresh_id


def uow_for(engine: Engine, participant: EventStoreParticipant) -> SqlUnitOfWork:
    return SqlUnitOfWork(engine, participants=[participant])


def deposit(uow: SqlUnitOfWork, participant: EventStoreParticipant, id: str, amount: int) -> None:
    with uow:
        EventSourcedRepository(uow, participant).load(ContractAccount, id).deposit(amount)
        uow.commit()


def opened(uow: SqlUnitOfWork, participant: EventStoreParticipant, owner: str = "ann") -> str:
    """A new account, committed through ``uow``; its id."""
    account_id = fresh_id()
    with uow:
        EventSourcedRepository(uow, participant).add(ContractAccount.open(account_id, owner))
        uow.commit()
    return account_id


def balance_on_disk(engine: Engine, id: str) -> tuple[Any, ...]:
    return EventStore(engine, cache=None).load(ContractAccount, id).state()


def test_a_committed_aggregate_is_served_from_the_cache(engine: Engine) -> None:
    participant = EventStoreParticipant()
    uow = uow_for(engine, participant)
    account_id = opened(uow, participant)
    assert participant.cache is not None and len(participant.cache) == 1
    for amount in (1, 2, 3):
        deposit(uow, participant, account_id, amount)
    assert len(participant.cache) == 1
    assert balance_on_disk(engine, account_id) == (account_id, 4, "ann", 6, 3)


def test_a_cached_load_catches_up_with_another_writer(engine: Engine) -> None:
    participant = EventStoreParticipant()
    uow = uow_for(engine, participant)
    account_id = opened(uow, participant)
    # Another process (another store, no shared cache) appends behind the cache's back.
    EventStore(engine, cache=None).append(
        f"ContractAccount-{account_id}", [Deposited(10), Deposited(20)], expected_version=1
    )
    deposit(uow, participant, account_id, 5)
    assert balance_on_disk(engine, account_id) == (account_id, 4, "ann", 35, 3)


def test_a_trusted_stale_entry_fails_once_as_a_conflict_then_loads_afresh(engine: Engine) -> None:
    participant = EventStoreParticipant(cache=AggregateCache(fast_forward=False))
    uow = uow_for(engine, participant)
    account_id = opened(uow, participant)
    EventStore(engine, cache=None).append(
        f"ContractAccount-{account_id}", [Deposited(10)], expected_version=1
    )
    with pytest.raises(ConcurrencyError) as raised:
        deposit(uow, participant, account_id, 5)
    assert raised.value.stream_id == f"ContractAccount-{account_id}"
    deposit(uow, participant, account_id, 5)  # the retry reads the stream
    assert balance_on_disk(engine, account_id) == (account_id, 3, "ann", 15, 2)


def test_a_failed_unit_of_work_puts_nothing_back(engine: Engine) -> None:
    participant = EventStoreParticipant()
    uow = uow_for(engine, participant)
    account_id = opened(uow, participant)

    def failing_command() -> None:
        with uow:
            account = EventSourcedRepository(uow, participant).load(ContractAccount, account_id)
            account.deposit(100)  # applied to the object's state, then the command fails
            raise RuntimeError("command failed")

    with pytest.raises(RuntimeError, match="command failed"):
        failing_command()
    with uow:
        account = EventSourcedRepository(uow, participant).load(ContractAccount, account_id)
        assert account.state() == (account_id, 1, "ann", 0, 0), "no trace of the failed command"


def test_the_callers_object_is_never_the_cached_one(engine: Engine) -> None:
    store = EventStore(engine)
    account_id = fresh_id()
    account = ContractAccount.open(account_id, "ann")
    store.save(account)
    account.deposit(7)  # recorded on the caller's object, never saved
    first = store.load(ContractAccount, account_id)
    second = store.load(ContractAccount, account_id)
    assert first is not account and second is not first
    assert first.state() == second.state() == (account_id, 1, "ann", 0, 0)
    assert not first.pending_events


def test_a_conflicting_save_is_not_cached(engine: Engine) -> None:
    store = EventStore(engine)
    account_id = fresh_id()
    store.save(ContractAccount.open(account_id, "ann"))
    stale = store.load(ContractAccount, account_id)
    current = store.load(ContractAccount, account_id)
    current.deposit(1)
    store.save(current)
    stale.deposit(2)
    with pytest.raises(ConcurrencyError):
        store.save(stale)
    assert store.load(ContractAccount, account_id).state() == (account_id, 2, "ann", 1, 1)


def test_an_aggregate_that_cannot_be_copied_is_just_not_cached(engine: Engine) -> None:
    store = EventStore(engine)
    account_id = fresh_id()
    account = ContractAccount.open(account_id, "ann")
    account.lock = threading.Lock()  # type: ignore[attr-defined]  # deepcopy refuses locks
    store.save(account)
    assert store.cache is not None and len(store.cache) == 0
    assert store.load(ContractAccount, account_id).state() == (account_id, 1, "ann", 0, 0)


def test_concurrent_units_of_work_never_share_a_cached_object(engine: Engine) -> None:
    participant = EventStoreParticipant()
    account_id = fresh_id()
    first, second = uow_for(engine, participant), uow_for(engine, participant)
    with first:
        EventSourcedRepository(first, participant).add(ContractAccount.open(account_id, "ann"))
        first.commit()
    with first, second:
        one = EventSourcedRepository(first, participant).load(ContractAccount, account_id)
        two = EventSourcedRepository(second, participant).load(ContractAccount, account_id)
        assert one is not two
        one.deposit(1)
        two.deposit(2)
        first.commit()
        with pytest.raises(ConcurrencyError):
            second.commit()
    assert balance_on_disk(engine, account_id) == (account_id, 2, "ann", 1, 1)


def test_historical_and_uncached_loads_read_the_store(engine: Engine) -> None:
    store = EventStore(engine)
    account_id = fresh_id()
    account = ContractAccount.open(account_id, "ann")
    account.deposit(1)
    account.deposit(2)
    store.save(account)
    assert store.load(ContractAccount, account_id, at_version=2).state()[3] == 1
    assert store.load(ContractAccount, account_id, use_cache=False).state()[3] == 3
    with pytest.raises(StreamNotFound):
        store.load(ContractAccount, fresh_id())


# -- one statement, no transaction round trips ---------------------------------------------------


@pytest.fixture
def one_connection(backend: str, request: pytest.FixtureRequest) -> Engine:
    """An engine with a single pooled connection, so consecutive units of work share it."""
    if backend == "sqlite":
        path: Path = request.getfixturevalue("sqlite_path")
        engine = sqlite_engine(path, pool_size=1, max_overflow=0)
    else:
        schema = request.getfixturevalue("pg_schema")
        engine = create_engine(
            POSTGRES_URL,
            connect_args={"options": f"-csearch_path={schema}"},
            pool_size=1,
            max_overflow=0,
        )
    default_schema.create_all(engine)
    return engine


def test_after_a_one_statement_unit_of_work_the_next_is_still_atomic(
    one_connection: Engine,
) -> None:
    engine = one_connection
    participant = EventStoreParticipant()
    uow = uow_for(engine, participant)
    taken, fresh = fresh_id(), fresh_id()
    with uow:  # one statement: runs as a transaction of its own
        EventSourcedRepository(uow, participant).add(ContractAccount.open(taken, "ann"))
        uow.commit()
    deposit(uow, participant, taken, 1)  # a read, then one statement
    with uow:  # two statements: one transaction
        accounts = EventSourcedRepository(uow, participant)
        accounts.add(ContractAccount.open(fresh, "bob"))  # fine on its own...
        accounts.add(ContractAccount.open(taken, "eve"))  # ...but this stream exists
        with pytest.raises(ConcurrencyError):
            uow.commit()
    with pytest.raises(StreamNotFound):
        balance_on_disk(engine, fresh)
    assert balance_on_disk(engine, taken) == (taken, 2, "ann", 1, 1)


def test_a_failing_one_statement_unit_of_work_writes_nothing_and_leaves_the_connection_usable(
    one_connection: Engine,
) -> None:
    engine = one_connection
    participant = EventStoreParticipant(cache=None)
    uow = uow_for(engine, participant)
    account_id = opened(uow, participant)
    with uow:
        EventSourcedRepository(uow, participant).add(ContractAccount.open(account_id, "eve"))
        with pytest.raises(ConcurrencyError):
            uow.commit()
    deposit(uow, participant, account_id, 3)
    assert balance_on_disk(engine, account_id) == (account_id, 2, "ann", 3, 1)


def test_several_events_of_one_aggregate_stay_atomic_when_a_later_one_fails(
    one_connection: Engine,
) -> None:
    engine = one_connection
    participant = EventStoreParticipant()
    uow = uow_for(engine, participant)
    existing, account_id = fresh_id(), fresh_id()
    with uow:
        EventSourcedRepository(uow, participant).add(ContractAccount.open(existing, "ann"))
        uow.commit()
    stored_id = EventStore(engine, cache=None).read_stream(f"ContractAccount-{existing}")[0]
    account = ContractAccount.open(account_id, "bob")
    account.deposit(1)
    account.deposit(2)
    # The third row reuses a stored event id: the insert fails on its last row only.
    pending = account._pending_list()
    sequence, third = pending[2]
    pending[2] = (sequence, dataclasses.replace(third, event_id=stored_id.event.event_id))
    with uow:
        EventSourcedRepository(uow, participant).add(account)
        with pytest.raises(StoreError, match="same event_id"):
            uow.commit()
    with pytest.raises(StreamNotFound):
        balance_on_disk(engine, account_id)


async def test_the_asyncio_repository_uses_the_cache_too(sqlite_async_engine: AsyncEngine) -> None:
    async with sqlite_async_engine.begin() as conn:
        await conn.run_sync(default_schema.metadata.create_all)
    participant = EventStoreParticipant()
    uow = AsyncSqlUnitOfWork(sqlite_async_engine, participants=[participant])
    account_id = fresh_id()
    async with uow:
        AsyncEventSourcedRepository(uow, participant).add(ContractAccount.open(account_id, "ann"))
        await uow.commit()
    for amount in (1, 2):
        async with uow:
            accounts = AsyncEventSourcedRepository(uow, participant)
            (await accounts.load(ContractAccount, account_id)).deposit(amount)
            await uow.commit()
        await asyncio.sleep(0)
    async with uow:
        account = await AsyncEventSourcedRepository(uow, participant).load(
            ContractAccount, account_id
        )
        assert account.state() == (account_id, 3, "ann", 3, 2)


def test_a_unit_of_work_that_only_reads_leaves_its_aggregate_cached(engine: Engine) -> None:
    participant = EventStoreParticipant()
    uow = uow_for(engine, participant)
    account_id = opened(uow, participant)
    assert participant.cache is not None
    for _ in range(2):
        with uow:  # a query: no commit
            account = EventSourcedRepository(uow, participant).load(ContractAccount, account_id)
            assert account.state() == (account_id, 1, "ann", 0, 0)
        assert len(participant.cache) == 1


def test_a_trusting_store_forgets_an_entry_that_conflicted(engine: Engine) -> None:
    store = EventStore(engine, cache=AggregateCache(fast_forward=False))
    account_id = fresh_id()
    store.save(ContractAccount.open(account_id, "ann"))
    EventStore(engine, cache=None).append(
        f"ContractAccount-{account_id}", [Deposited(10)], expected_version=1
    )
    stale = store.load(ContractAccount, account_id)
    stale.deposit(1)
    with pytest.raises(ConcurrencyError):
        store.save(stale)
    fresh = store.load(ContractAccount, account_id)
    assert fresh.state() == (account_id, 2, "ann", 10, 1)
    fresh.deposit(1)
    store.save(fresh)
    assert balance_on_disk(engine, account_id) == (account_id, 3, "ann", 11, 2)
