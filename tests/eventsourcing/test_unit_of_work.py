"""Event-sourced aggregates committed through the SQL unit of work (sync and asyncio)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import Handlers
from tidings.errors import ConcurrencyError, ConfigurationError, StreamNotFound
from tidings.eventsourcing import (
    AsyncEventSourcedRepository,
    AsyncEventStore,
    EventSourcedRepository,
    EventStore,
    EventStoreParticipant,
    SnapshotPolicy,
    default_schema,
)
from tidings.persistence.sql import AsyncSqlUnitOfWork, SqlUnitOfWork
from tidings.testing.services import POSTGRES_URL
from tidings.testing.store_contract import (
    ContractAccount,
    Deposited,
    Opened,
    fresh_id,
    wait_for_log,
)


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(default_schema.metadata.tables[table])
            ).scalar_one()
        )


@pytest.fixture
def participant() -> EventStoreParticipant:
    return EventStoreParticipant(snapshots=SnapshotPolicy(every=2))


def test_add_load_change_commit(engine: Engine, participant: EventStoreParticipant) -> None:
    account_id = fresh_id()
    uow = SqlUnitOfWork(engine, participants=[participant])
    with uow:
        accounts = EventSourcedRepository(uow, participant)
        created = accounts.add(ContractAccount.open(account_id, "ann"))
        uow.commit()
    assert not created.pending_events
    with uow:
        accounts = EventSourcedRepository(uow, participant)
        account = accounts.load(ContractAccount, account_id)
        assert accounts.load(ContractAccount, account_id) is account, (
            "one instance per unit of work"
        )
        account.deposit(5)
        account.deposit(7)
        uow.commit()
    store = EventStore(engine)
    assert store.load(ContractAccount, account_id).state() == (account_id, 3, "ann", 12, 2)
    log = [
        e.event.event_type
        for e in wait_for_log(store, 3, stream_prefix=f"ContractAccount-{account_id}")
    ]
    assert log == ["tidings.contract.Opened"] + ["tidings.contract.Deposited"] * 2
    assert count(engine, "tidings_snapshots") == 1, "crossing version 2 took a snapshot"


def test_stale_commit_conflicts_and_the_whole_batch_rolls_back(
    engine: Engine, participant: EventStoreParticipant
) -> None:
    taken, other = fresh_id(), fresh_id()
    store = EventStore(engine)
    store.save(ContractAccount.open(taken, "ann"))
    store.save(ContractAccount.open(other, "bob"))
    snapshots_before = count(engine, "tidings_snapshots")
    stale = store.load(ContractAccount, taken)
    fresh = store.load(ContractAccount, taken)
    fresh.deposit(1)
    store.save(fresh)

    uow = SqlUnitOfWork(engine, participants=[participant])
    with uow:
        accounts = EventSourcedRepository(uow, participant)
        bystander = accounts.load(ContractAccount, other)
        bystander.deposit(100)  # would take a snapshot: crosses version 2
        accounts.add(stale)
        stale.deposit(2)
        with pytest.raises(ConcurrencyError) as caught:
            uow.commit()
    assert caught.value.stream_id == f"ContractAccount-{taken}"
    assert caught.value.expected_version == 1
    assert "another writer already stored version 2" in str(caught.value)
    assert store.current_version(f"ContractAccount-{other}") == 1, (
        "nothing of the batch was written"
    )
    assert count(engine, "tidings_snapshots") == snapshots_before
    assert bystander.pending_events and stale.pending_events


def test_in_transaction_handlers_append_atomically(engine: Engine) -> None:
    participant = EventStoreParticipant()
    handlers = Handlers()
    mirror_id = fresh_id()

    @handlers.in_transaction(Deposited)
    def mirror(deposited: Deposited, ctx) -> None:  # type: ignore[no-untyped-def]
        if deposited.amount > 0:
            accounts = EventSourcedRepository(ctx.uow, participant)
            accounts.load(ContractAccount, mirror_id).deposit(-deposited.amount)

    store = EventStore(engine)
    store.save(ContractAccount.open(mirror_id, "mirror"))
    source_id = fresh_id()
    uow = SqlUnitOfWork(engine, handlers, participants=[participant])
    with uow:
        account = EventSourcedRepository(uow, participant).add(
            ContractAccount.open(source_id, "ann")
        )
        account.deposit(30)
        uow.commit()
    assert store.load(ContractAccount, mirror_id).balance == -30
    mirrored = store.read_stream(f"ContractAccount-{mirror_id}", from_version=2)
    source = store.read_stream(f"ContractAccount-{source_id}", from_version=2)
    assert mirrored[0].event.causation_id == source[0].event.event_id
    assert mirrored[0].checkpoint > source[0].checkpoint


def test_historical_loads_are_read_only_views(
    engine: Engine, participant: EventStoreParticipant
) -> None:
    account_id = fresh_id()
    store = EventStore(engine)
    account = ContractAccount.open(account_id, "ann")
    account.deposit(3)
    store.save(account)
    uow = SqlUnitOfWork(engine, participants=[participant])
    with uow:
        accounts = EventSourcedRepository(uow, participant)
        past = accounts.load(ContractAccount, account_id, at_version=1)
        assert past.balance == 0
        past.deposit(99)  # not tracked: never written
        uow.commit()
    assert store.load(ContractAccount, account_id).balance == 3


def test_repository_rejects_bad_input(engine: Engine, participant: EventStoreParticipant) -> None:
    uow = SqlUnitOfWork(engine, participants=[participant])
    with uow:
        accounts = EventSourcedRepository(uow, participant)
        with pytest.raises(ConfigurationError, match="EventSourcedAggregate"):
            accounts.load(Opened, "x")  # type: ignore[type-var]
        with pytest.raises(StreamNotFound, match="ContractAccount-nobody"):
            accounts.load(ContractAccount, "nobody")


async def test_asyncio_on_sqlite(sqlite_async_engine: AsyncEngine) -> None:
    await default_schema.create_all_async(sqlite_async_engine)
    await check_asyncio_unit_of_work_and_store(sqlite_async_engine)


async def test_asyncio_on_postgres(pg_async_engine: AsyncEngine) -> None:
    await default_schema.create_all_async(pg_async_engine)
    await check_asyncio_unit_of_work_and_store(pg_async_engine)


async def check_asyncio_unit_of_work_and_store(async_engine: AsyncEngine) -> None:
    participant = EventStoreParticipant(snapshots=SnapshotPolicy(every=2))
    account_id = fresh_id()
    uow = AsyncSqlUnitOfWork(async_engine, participants=[participant])
    async with uow:
        accounts = AsyncEventSourcedRepository(uow, participant)
        account = accounts.add(ContractAccount.open(account_id, "ann"))
        account.deposit(4)
        await uow.commit()
    store = AsyncEventStore(async_engine)
    stale = await store.load(ContractAccount, account_id)
    async with uow:
        accounts = AsyncEventSourcedRepository(uow, participant)
        loaded = await accounts.load(ContractAccount, account_id)
        loaded.deposit(6)
        await uow.commit()
    assert (await store.load(ContractAccount, account_id)).balance == 10
    assert (await balance_at_version_two(async_engine, participant, account_id)) == 4
    stale.deposit(1)
    with pytest.raises(ConcurrencyError) as caught:
        await store.save(stale)
    assert caught.value.actual_version == 3
    stream = f"ContractAccount-{account_id}"
    assert await store.current_version(stream) == 3
    assert [e.event.stream_version for e in await store.read_stream(stream, backward=True)] == [
        3,
        2,
        1,
    ]
    assert await store.append(stream, [Deposited(1)], expected_version=3) == 4
    with pytest.raises(ConcurrencyError):
        await store.append(stream, [Deposited(1)], expected_version=3)
    entries = [e async for e in store.iter_log(stream_prefix=stream, page_size=3)]
    for _ in range(6000):  # PostgreSQL's fence may lag on a busy server: wait, never assert
        if len(entries) == 4:
            break
        await asyncio.sleep(0.01)
        entries = [e async for e in store.iter_log(stream_prefix=stream, page_size=3)]
    assert [e.event.stream_version for e in entries] == [1, 2, 3, 4]
    page = await store.read_log(entries[1].checkpoint, limit=1, types=[Deposited])
    assert page.entries[0].event.stream_version == 3


async def balance_at_version_two(
    engine: AsyncEngine, participant: EventStoreParticipant, account_id: str
) -> int:
    uow = AsyncSqlUnitOfWork(engine, participants=[participant])
    async with uow:
        past = await AsyncEventSourcedRepository(uow, participant).load(
            ContractAccount, account_id, at_version=2
        )
        return past.balance


def test_a_stream_cannot_get_holes(engine: Engine, participant: EventStoreParticipant) -> None:
    account_id = fresh_id()
    EventStore(engine).save(ContractAccount.open(account_id, "ann"))
    ahead = EventStore(engine).load(ContractAccount, account_id)
    ahead.version = 5  # a corrupted in-memory version: the next event would be 6
    uow = SqlUnitOfWork(engine, participants=[participant])
    with uow:
        EventSourcedRepository(uow, participant).add(ahead)
        ahead.deposit(1)
        with pytest.raises(ConcurrencyError, match="has no version 5 yet") as caught:
            uow.commit()
    assert caught.value.expected_version == 5
    assert EventStore(engine).current_version(f"ContractAccount-{account_id}") == 1


def test_a_writer_racing_past_the_version_check_gets_the_actual_version(
    pg_engine: Engine, pg_schema: str
) -> None:
    """PostgreSQL: the check passes while another transaction holds version 2 uncommitted;
    the insert then waits on the unique key and fails once that transaction commits."""
    default_schema.create_all(pg_engine)
    racer_name = f"tidings-racer-{fresh_id()}"
    racer_engine = create_engine(
        POSTGRES_URL,
        connect_args={"options": f"-csearch_path={pg_schema}", "application_name": racer_name},
    )
    store = EventStore(racer_engine)
    stream = f"race-{fresh_id()}"
    store.append(stream, [Opened("ann")], expected_version=0)
    outcome: list[BaseException | int] = []
    with pg_engine.connect() as holder:
        holder.begin()
        holder.execute(
            default_schema.events.insert(),
            [
                {
                    **row,
                    "headers": "{}",
                }
                for row in _rows_for(stream, 2)
            ],
        )
        racer = threading.Thread(target=lambda: _try_append(store, stream, outcome))
        racer.start()
        _wait_until_blocked(pg_engine, racer_name)
        holder.commit()
        racer.join()
    racer_engine.dispose()
    (error,) = outcome
    assert isinstance(error, ConcurrencyError)
    assert (error.expected_version, error.actual_version) == (1, 2)
    assert isinstance(error.__cause__, ConcurrencyError), "detected by the constraint"


def _rows_for(stream: str, version: int) -> list[dict[str, object]]:
    from datetime import UTC, datetime

    from tidings.core.ids import uuid7

    event_id = uuid7()
    return [
        {
            "event_id": event_id,
            "event_type": "tidings.contract.Deposited",
            "event_version": 1,
            "stream_id": stream,
            "stream_version": version,
            "previous_version": version - 1,
            "occurred_at": datetime.now(UTC),
            "correlation_id": event_id,
            "payload": b'{"amount":1}',
        }
    ]


def _try_append(store: EventStore, stream: str, outcome: list[BaseException | int]) -> None:
    try:
        outcome.append(store.append(stream, [Deposited(2)], expected_version=1))
    except BaseException as exc:
        outcome.append(exc)


def _wait_until_blocked(engine: Engine, application_name: str) -> None:
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND application_name = :name"
    )
    with engine.connect() as conn:
        for _ in range(3000):  # a bound on waiting, never an assertion on time
            if conn.execute(query, {"name": application_name}).scalar_one():
                return
            threading.Event().wait(0.01)
    raise AssertionError("the racing append never blocked on the uncommitted version")
