"""Batch consuming: each adapter hands what it fetched for a partition to the inbox at once.

On every broker (in-memory, RabbitMQ, NATS JetStream, Redis Streams) with the inbox on
PostgreSQL: a batch's inbox rows and effects commit in one transaction and only then are its
messages acknowledged (a consumer killed before the commit loses nothing); a poison message in
a batch is dead-lettered while the others are applied exactly once; redelivered duplicates in a
batch are dropped by the inbox; each stream keeps its order inside and across batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tidings import Envelope
from tidings.brokers.inbox import InboxConsumer, inbox_metadata, inbox_table
from tidings.brokers.port import Delivery, Topology
from tidings.brokers.wire import decode_message, encode_headers
from tidings.testing.broker_contract import BrokerFactory, Bus, eventually, probe

pytestmark = pytest.mark.postgres

effects_metadata = MetaData()
effects = Table(
    "batch_test_effects",
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


@pytest.fixture
async def bus(broker_factory: BrokerFactory, run_id: str) -> AsyncIterator[Bus]:
    import uuid

    topology = Topology(
        name=f"batch-{run_id}-{uuid.uuid4().hex[:6]}",
        groups=("g",),
        partitions=2,
        max_deliveries=3,
        redelivery_after=1.0,
        prefetch=32,
    )
    bus = Bus(broker_factory, topology)
    try:
        yield bus
    finally:
        await bus.close()
        await broker_factory.cleanup(topology)


class Effects:
    """The consumer's business logic, with a batch form; notes what it applied, in order."""

    def __init__(self, poison: set[tuple[str, int]] | None = None) -> None:
        self.poison = poison or set()
        self.batches: list[int] = []
        self.seen: list[tuple[str, int]] = []
        #: Set to make ``handle_many`` wait (a consumer busy with a batch) until it is cleared.
        self.hold: asyncio.Event | None = None
        self.holding = asyncio.Event()

    def _check(self, envelope: Envelope[Any]) -> tuple[str, int]:
        key = (envelope.event.stream, envelope.event.n)
        if key in self.poison:
            raise RuntimeError(f"poison message {key}")
        return key

    async def __call__(self, envelope: Envelope[Any], session: AsyncSession) -> None:
        key = self._check(envelope)
        await session.execute(insert(effects).values(stream=key[0], n=key[1]))
        self.seen.append(key)

    async def handle_many(self, envelopes: Sequence[Envelope[Any]], session: AsyncSession) -> None:
        keys = [self._check(envelope) for envelope in envelopes]
        await session.execute(insert(effects), [{"stream": s, "n": n} for s, n in keys])
        if self.hold is not None:
            self.holding.set()
            await self.hold.wait()
        self.batches.append(len(keys))
        self.seen.extend(keys)


async def applied(engine: AsyncEngine) -> list[tuple[str, int]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(effects.c.stream, effects.c.n).order_by(effects.c.id)
        )
        return [(stream, n) for stream, n in rows]


async def count(engine: AsyncEngine, table: Table) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)


def by_stream(keys: Sequence[tuple[str, int]]) -> dict[str, list[int]]:
    streams: dict[str, list[int]] = {}
    for stream, n in keys:
        streams.setdefault(stream, []).append(n)
    return streams


async def test_a_batch_commits_once_and_is_acked_after_the_commit(
    bus: Bus, engine: AsyncEngine
) -> None:
    publisher = await bus.client()
    messages = [probe(f"s{i % 4}", i // 4 + 1) for i in range(40)]
    await bus.publish_all(publisher, messages)  # all waiting: the consumer gets them in batches

    # A first consumer takes a batch and is killed before its transaction commits.
    doomed_effects = Effects()
    doomed_effects.hold = asyncio.Event()
    doomed = await bus.client()
    await doomed.consume("g", InboxConsumer("batch", engine, doomed_effects))
    await eventually(doomed_effects.holding.is_set, "a batch reached the handler")
    await bus.factory.kill(doomed)
    assert await count(engine, inbox_table) == 0  # nothing committed, so nothing was acked

    # Another consumer gets everything, in batches, each applied exactly once.
    survivor_effects = Effects()
    runner = InboxConsumer("batch", engine, survivor_effects)
    survivor = await bus.client()
    consumer = await survivor.consume("g", runner)
    await eventually(lambda: runner.handled == 40, "the survivor handled all 40 messages")
    assert max(survivor_effects.batches) > 1  # they did come in batches
    assert sorted(await applied(engine)) == sorted(
        (m.stream_id, m.stream_version) for m in messages
    )
    assert await count(engine, inbox_table) == 40
    await consumer.stop()

    # Everything was acknowledged: a new consumer of the group sees only what comes next.
    late: list[tuple[str, int]] = []

    async def record(delivery: Delivery) -> None:
        stored = decode_message(delivery.headers, delivery.body)
        assert stored.stream_id is not None and stored.stream_version is not None
        late.append((stored.stream_id, stored.stream_version))

    observer = await bus.client()
    await observer.consume("g", record)
    await bus.publish_all(publisher, [probe("marker", 1)])
    await eventually(lambda: ("marker", 1) in late, "the marker arrived")
    await asyncio.sleep(0.3)
    assert late == [("marker", 1)]


class PathsTaken:
    """Wraps the inbox consumer, noting whether deliveries came one by one or as batches."""

    def __init__(self, runner: InboxConsumer) -> None:
        self.runner = runner
        self.batch_sizes: list[int] = []
        self.singles = 0

    async def __call__(self, delivery: Delivery) -> None:
        self.singles += 1
        await self.runner(delivery)

    async def handle_batch(self, deliveries: Sequence[Delivery]) -> None:
        self.batch_sizes.append(len(deliveries))
        await self.runner.handle_batch(deliveries)


async def test_a_lone_message_goes_through_the_group_commit_too(
    bus: Bus, engine: AsyncEngine
) -> None:
    # So that what other partitions fetch meanwhile joins its commit: no transaction per message.
    runner = InboxConsumer("lone", engine, Effects())
    paths = PathsTaken(runner)
    client = await bus.client()
    consumer = await client.consume("g", paths)
    publisher = await bus.client()
    await bus.publish_all(publisher, [probe("alone", 1)])
    await eventually(lambda: runner.handled == 1, "the message was handled")
    assert (paths.batch_sizes, paths.singles) == ([1], 0)
    assert await applied(engine) == [("alone", 1)]
    await consumer.stop()


async def test_a_poison_message_in_a_batch_is_dead_lettered_and_the_rest_applied_once(
    bus: Bus, engine: AsyncEngine
) -> None:
    publisher = await bus.client()
    # The poison message's stream, and others whose batches (on both partitions) may be
    # committed together with its batch: they must not be lost or applied twice either.
    streams = ["poisoned", "a", "b", "c"]
    messages = [probe(stream, n) for n in range(1, 21) for stream in streams]
    await bus.publish_all(publisher, messages)
    handler = Effects(poison={("poisoned", 7)})
    runner = InboxConsumer("poison", engine, handler)
    consumer_side = await bus.client()
    await consumer_side.consume("g", runner)
    healthy = len(messages) - 1
    await eventually(lambda: runner.handled == healthy, "every healthy message was handled")

    async def dead() -> list[Delivery]:
        return await consumer_side.dead_letters("g")

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not await dead():
        assert loop.time() < deadline, "the poison message was never dead-lettered"
        await asyncio.sleep(0.05)
    (letter,) = await dead()
    poisoned = decode_message(letter.headers, letter.body)
    assert (poisoned.stream_id, poisoned.stream_version) == ("poisoned", 7)
    # Exactly once each, in stream order, the poison one never applied.
    expected = {stream: list(range(1, 21)) for stream in streams}
    expected["poisoned"].remove(7)
    assert by_stream(await applied(engine)) == expected
    assert await count(engine, inbox_table) == healthy


async def test_redelivered_duplicates_in_a_batch_are_dropped_by_the_inbox(
    bus: Bus, engine: AsyncEngine
) -> None:
    publisher = await bus.client()
    first = [probe(f"d{i % 3}", i // 3 + 1) for i in range(12)]
    handler = Effects()
    runner = InboxConsumer("dedup", engine, handler)
    consumer_side = await bus.client()
    await consumer_side.consume("g", runner)
    await bus.publish_all(publisher, first)
    await eventually(lambda: runner.handled == 12, "the first 12 were handled")

    # The same messages again (a relay retrying after a lost confirm), mixed with new ones and
    # with a new one twice: sent as raw copies so no broker-side deduplication hides them.
    later = [probe(f"d{i % 3}", i // 3 + 5) for i in range(6)]
    copies = [*first, later[0], *later, later[3]]
    for message in copies:
        partition = _partition(bus.topology, message.stream_id)
        await publisher.publish_raw(partition, encode_headers(message), message.payload)
    await eventually(
        lambda: runner.handled + runner.duplicates == 12 + len(copies), "every copy was settled"
    )
    assert runner.handled == 18
    assert runner.duplicates == len(copies) - 6
    keys = await applied(engine)
    assert len(keys) == len(set(keys)) == 18
    assert await count(engine, inbox_table) == 18


async def test_per_stream_order_holds_within_and_across_batches(
    bus: Bus, engine: AsyncEngine
) -> None:
    publisher = await bus.client()
    streams = [f"o{i}" for i in range(5)]
    messages = [probe(stream, n) for n in range(1, 31) for stream in streams]
    for start in range(0, len(messages), 50):
        await bus.publish_all(publisher, messages[start : start + 50])
    handler = Effects()
    runner = InboxConsumer("order", engine, handler)
    consumer_side = await bus.client()
    await consumer_side.consume("g", runner)
    await eventually(lambda: runner.handled == len(messages), "every message was handled")
    assert max(handler.batches) > 1
    expected = list(range(1, 31))
    assert by_stream(handler.seen) == dict.fromkeys(streams, expected)
    assert by_stream(await applied(engine)) == dict.fromkeys(streams, expected)


def _partition(topology: Topology, stream: str | None) -> int:
    from tidings.brokers.port import partition_of

    return partition_of(stream, topology.partitions)
