"""The inbox on PostgreSQL: effects and inbox row in one transaction, duplicates applied once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tidings import Envelope
from tidings.brokers.inbox import InboxConsumer, inbox_metadata, inbox_table
from tidings.brokers.memory import MemoryBroker, MemoryBrokerServer
from tidings.brokers.port import Topology
from tidings.brokers.wire import encode_headers
from tidings.brokers.worker import BrokerSubscription, Worker
from tidings.testing.broker_contract import eventually, probe

pytestmark = pytest.mark.postgres

effects_metadata = MetaData()
effects = Table(
    "inbox_test_effects",
    effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("stream", String(100), nullable=False),
    Column("n", Integer, nullable=False),
)


@pytest.fixture
async def engine(pg_async_engine: AsyncEngine) -> AsyncEngine:
    async with pg_async_engine.begin() as connection:
        await connection.run_sync(inbox_metadata.create_all)
        await connection.run_sync(effects_metadata.create_all)
    return pg_async_engine


async def record(envelope: Envelope[Any], session: AsyncSession) -> None:
    await session.execute(insert(effects).values(stream=envelope.event.stream, n=envelope.event.n))
    await asyncio.sleep(0.01)  # widen the window in which a racing duplicate could slip in


async def count(engine: AsyncEngine, table: Table) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)


async def test_duplicates_racing_on_two_partitions_are_applied_once(engine: AsyncEngine) -> None:
    topology = Topology(name="inbox-race", groups=("g",), partitions=2)
    broker = MemoryBroker(topology, MemoryBrokerServer())
    await broker.connect()
    await broker.declare()
    runner = InboxConsumer("race", engine, record)
    await broker.consume("g", runner)
    messages = [probe(f"s{i}", i) for i in range(20)]
    for message in messages:
        # The same message on both partitions: two handlers run it at the same time.
        for partition in (0, 1):
            await broker.publish_raw(partition, encode_headers(message), message.payload)
    await eventually(lambda: runner.handled + runner.duplicates == 40, "all 40 deliveries settled")
    assert runner.handled == 20
    assert runner.duplicates == 20
    assert await count(engine, effects) == 20
    assert await count(engine, inbox_table) == 20
    await broker.close()


async def test_two_consumers_keep_separate_inbox_records(engine: AsyncEngine) -> None:
    topology = Topology(name="inbox-two", groups=("billing", "shipping"), partitions=1)
    broker = MemoryBroker(topology, MemoryBrokerServer())
    await broker.connect()
    await broker.declare()
    billing = InboxConsumer("billing", engine, record)
    shipping = InboxConsumer("shipping", engine, record)
    await broker.consume("billing", billing)
    await broker.consume("shipping", shipping)
    await broker.publish([probe("order", 1)])
    await eventually(lambda: billing.handled == shipping.handled == 1, "both consumers handled it")
    assert await count(engine, inbox_table) == 2
    await broker.close()


async def test_worker_runs_inbox_consumers_until_stopped(engine: AsyncEngine) -> None:
    server = MemoryBrokerServer()
    topology = Topology(name="inbox-worker", groups=("g",), partitions=4)
    runner = InboxConsumer("worker", engine, record)
    worker = Worker([BrokerSubscription(lambda: MemoryBroker(topology, server), "g", runner)])
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    publisher = MemoryBroker(topology, server)
    await publisher.connect()
    await eventually(lambda: worker.running, "the worker started")
    await publisher.publish([probe(f"w{i % 3}", i) for i in range(30)])
    await eventually(lambda: runner.handled == 30, "the worker handled every message")
    stop.set()
    await running
    assert await count(engine, effects) == 30


async def test_a_batch_records_any_event_type_exactly(engine: AsyncEngine) -> None:
    """A batch's inbox rows go to PostgreSQL as array literals: a type name holding what is
    special in one (commas, braces, quotes, backslashes, spaces, the word NULL) is stored as
    given, and recording the batch again finds every row already there."""
    from dataclasses import replace

    names = ["a,b", "{x}", 'say "hi"', "back\\slash", "two  spaces ", "NULL", "caf\u00e9", ""]
    messages = [replace(probe("s", n), event_type=name) for n, name in enumerate(names)]
    ids = [str(message.event_id) for message in messages]
    runner = InboxConsumer("literal", engine, record)
    async with runner.sessions() as session, session.begin():
        assert await runner._record_many(session, ids, messages) == set(ids)
    async with runner.sessions() as session, session.begin():
        assert await runner._record_many(session, ids, messages) == set()
    async with engine.connect() as connection:
        stored = dict(
            (
                await connection.execute(
                    select(inbox_table.c.message_id, inbox_table.c.event_type).where(
                        inbox_table.c.consumer == "literal"
                    )
                )
            ).all()
        )
    assert stored == dict(zip(ids, names, strict=True))


async def test_a_batch_tells_new_messages_from_those_already_recorded(
    engine: AsyncEngine,
) -> None:
    """The statement reports the ids that were already there; the rest are new, each once,
    even when a batch holds the same message twice or only messages seen before."""
    seen = [probe("seen", n) for n in range(3)]
    new = [probe("new", n) for n in range(4)]
    runner = InboxConsumer("mixed", engine, record)

    def ids(messages: list[Any]) -> list[str]:
        return [str(message.event_id) for message in messages]

    async with runner.sessions() as session, session.begin():
        assert await runner._record_many(session, ids(seen), seen) == set(ids(seen))
    batch = [new[0], seen[1], new[1], new[0], seen[0], new[2], new[3], new[3]]
    async with runner.sessions() as session, session.begin():
        assert await runner._record_many(session, ids(batch), batch) == set(ids(new))
    async with runner.sessions() as session, session.begin():
        assert await runner._record_many(session, ids(batch), batch) == set()
    assert await count(engine, inbox_table) == len(seen) + len(new)
