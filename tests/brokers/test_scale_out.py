"""Competing consumers scale out: a group's partitions are shared fairly among its live consumers.

On every broker (in-memory, RabbitMQ, NATS JetStream, Redis Streams), with the inbox on
PostgreSQL: a consumer alone serves every partition; a second one joining gets its share
within a few rebalance intervals (each serves about half, no partition is ever handled by both
at once); when the first leaves, the second serves everything again. Throughout, every stream
is applied in order and exactly once.

Nothing is timed: the test publishes rounds of traffic on every partition and waits for
conditions (with a generous deadline) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tidings import Envelope
from tidings.brokers.inbox import InboxConsumer, inbox_metadata
from tidings.brokers.port import Broker, Delivery, Topology, partition_of
from tidings.testing.broker_contract import (
    WAIT_LIMIT,
    BrokerFactory,
    Bus,
    Received,
    eventually,
    probe,
)
from tidings.testing.services import require

pytestmark = pytest.mark.postgres

PARTITIONS = 4
#: Streams per partition, so that every round of traffic reaches every partition.
STREAMS_PER_PARTITION = 3

effects_metadata = MetaData()
effects = Table(
    "scale_out_effects",
    effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("stream", String(100), nullable=False),
    Column("n", Integer, nullable=False),
    Column("consumer", String(20), nullable=False),
)


@pytest.fixture
async def engine(pg_async_engine: AsyncEngine) -> AsyncEngine:
    async with pg_async_engine.begin() as connection:
        await connection.run_sync(inbox_metadata.create_all)
        await connection.run_sync(effects_metadata.create_all)
    return pg_async_engine


@pytest.fixture
async def bus(broker_factory: BrokerFactory, run_id: str) -> AsyncIterator[Bus]:
    topology = Topology(
        name=f"scale-{run_id}-{uuid.uuid4().hex[:6]}",
        groups=("g",),
        partitions=PARTITIONS,
        max_deliveries=3,
        # Also the lease time and (a third of it) the rebalance interval: short, for the test.
        redelivery_after=1.0,
        prefetch=16,
    )
    bus = Bus(broker_factory, topology)
    try:
        yield bus
    finally:
        await bus.close()
        await broker_factory.cleanup(topology)


def streams_on_every_partition() -> list[str]:
    """Stream names, ``STREAMS_PER_PARTITION`` of them on each partition."""
    chosen: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    for i in itertools.count():
        name = f"s{i}"
        bucket = chosen[partition_of(name, PARTITIONS)]
        if len(bucket) < STREAMS_PER_PARTITION:
            bucket.append(name)
        if all(len(names) == STREAMS_PER_PARTITION for names in chosen.values()):
            return [name for names in chosen.values() for name in names]
    raise AssertionError("unreachable")


class Recorder:
    """What every consumer handled, and whether two ever handled one partition at once."""

    def __init__(self) -> None:
        #: (stream, n, consumer) in the order handlers ran.
        self.log: list[tuple[str, int, str]] = []
        #: Partition -> the consumer whose handler is running on it right now.
        self.busy: dict[int, str] = {}
        self.overlaps: list[tuple[int, str, str]] = []


class Effects:
    """One consumer's business logic (with its batch form): writes an effect row per event."""

    def __init__(self, name: str, recorder: Recorder) -> None:
        self.name = name
        self.recorder = recorder

    async def __call__(self, envelope: Envelope[Any], session: AsyncSession) -> None:
        await self.handle_many([envelope], session)

    async def handle_many(self, envelopes: Sequence[Envelope[Any]], session: AsyncSession) -> None:
        keys = [(envelope.event.stream, envelope.event.n) for envelope in envelopes]
        partitions = {partition_of(stream, PARTITIONS) for stream, _ in keys}
        for partition in partitions:
            other = self.recorder.busy.get(partition)
            if other is not None and other != self.name:
                self.recorder.overlaps.append((partition, other, self.name))
            self.recorder.busy[partition] = self.name
        try:
            # The database round trip is where another consumer would sneak in, if it could.
            await session.execute(
                insert(effects),
                [{"stream": s, "n": n, "consumer": self.name} for s, n in keys],
            )
        finally:
            for partition in partitions:
                if self.recorder.busy.get(partition) == self.name:
                    del self.recorder.busy[partition]
        self.recorder.log.extend((s, n, self.name) for s, n in keys)


async def applied(engine: AsyncEngine) -> list[tuple[str, int, str]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(effects.c.stream, effects.c.n, effects.c.consumer).order_by(effects.c.id)
        )
        return [(stream, n, consumer) for stream, n, consumer in rows]


async def applied_per_stream(engine: AsyncEngine, expected: int) -> dict[str, list[int]]:
    """The committed effects, per stream, once there are at least ``expected`` of them (the
    handlers noted the last round before its commit, which may still be on its way)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    rows = await applied(engine)
    while len(rows) < expected and loop.time() < deadline:
        await asyncio.sleep(0.05)
        rows = await applied(engine)
    per_stream: dict[str, list[int]] = {}
    for stream, n, _ in rows:
        per_stream.setdefault(stream, []).append(n)
    return per_stream


class Traffic:
    """Rounds of messages: round ``r`` sends version ``r`` of every stream."""

    def __init__(self, bus: Bus, publisher: Broker, recorder: Recorder) -> None:
        self.bus = bus
        self.publisher = publisher
        self.recorder = recorder
        self.streams = streams_on_every_partition()
        self.rounds = 0

    async def round(self) -> dict[int, set[str]]:
        """Send one round, wait until it is handled; which consumers served each partition."""
        self.rounds += 1
        n = self.rounds
        await self.bus.publish_all(self.publisher, [probe(s, n) for s in self.streams])
        expected = len(self.streams)
        await eventually(
            lambda: len({s for s, m, _ in self.recorder.log if m == n}) == expected,
            f"round {n} handled",
        )
        served: dict[int, set[str]] = {p: set() for p in range(PARTITIONS)}
        for stream, m, consumer in self.recorder.log:
            if m == n:
                served[partition_of(stream, PARTITIONS)].add(consumer)
        return served

    async def until(self, condition: Callable[[dict[int, set[str]]], bool], what: str) -> None:
        """Send rounds until one of them is served as ``condition`` wants."""
        for _ in range(int(WAIT_LIMIT / 0.1)):
            if condition(await self.round()):
                return
        pytest.fail(f"never happened: {what}")


def shared_fairly(served: dict[int, set[str]], consumers: set[str]) -> bool:
    if any(len(by) != 1 for by in served.values()):
        return False
    counts = {name: sum(1 for by in served.values() if name in by) for name in consumers}
    return min(counts.values()) >= 1 and max(counts.values()) - min(counts.values()) <= 1


async def test_a_joining_consumer_takes_its_share_and_a_leaving_one_hands_over(
    bus: Bus, engine: AsyncEngine
) -> None:
    recorder = Recorder()
    publisher = await bus.client()
    traffic = Traffic(bus, publisher, recorder)

    first = await bus.client()
    await first.consume("g", InboxConsumer("scale", engine, Effects("A", recorder)))
    # Alone, it serves every partition.
    await traffic.until(
        lambda served: all(by == {"A"} for by in served.values()), "A serving every partition"
    )

    second = await bus.client()
    await second.consume("g", InboxConsumer("scale", engine, Effects("B", recorder)))
    await traffic.until(
        lambda served: shared_fairly(served, {"A", "B"}), "A and B sharing the partitions"
    )
    # And it stays that way: each partition keeps its one consumer.
    settled = await traffic.round()
    for _ in range(3):
        assert await traffic.round() == settled
    assert shared_fairly(settled, {"A", "B"})

    await first.close()  # A leaves gracefully: B takes over everything
    await traffic.until(
        lambda served: all(by == {"B"} for by in served.values()), "B serving every partition"
    )

    assert recorder.overlaps == []
    per_stream = await applied_per_stream(engine, len(traffic.streams) * traffic.rounds)
    everything = list(range(1, traffic.rounds + 1))
    for stream in traffic.streams:
        # In order and exactly once (the inbox drops redeliveries after a handover).
        assert per_stream[stream] == everything, f"{stream}: {per_stream[stream]}"


async def test_the_partitions_of_a_killed_consumer_are_taken_over(
    bus: Bus, engine: AsyncEngine
) -> None:
    recorder = Recorder()
    publisher = await bus.client()
    traffic = Traffic(bus, publisher, recorder)

    doomed = await bus.client()
    await doomed.consume("g", InboxConsumer("scale", engine, Effects("A", recorder)))
    survivor = await bus.client()
    await survivor.consume("g", InboxConsumer("scale", engine, Effects("B", recorder)))
    await traffic.until(
        lambda served: shared_fairly(served, {"A", "B"}), "A and B sharing the partitions"
    )

    await bus.factory.kill(doomed)  # no goodbye: its leases / consumers must time out
    await traffic.until(
        lambda served: all(by == {"B"} for by in served.values()), "B serving every partition"
    )

    per_stream = await applied_per_stream(engine, len(traffic.streams) * traffic.rounds)
    everything = list(range(1, traffic.rounds + 1))
    for stream in traffic.streams:
        assert per_stream[stream] == everything, f"{stream}: {per_stream[stream]}"


async def test_three_consumers_each_serve_a_part(bus: Bus, engine: AsyncEngine) -> None:
    recorder = Recorder()
    publisher = await bus.client()
    traffic = Traffic(bus, publisher, recorder)
    names = {"A", "B", "C"}
    for name in sorted(names):
        client = await bus.client()
        await client.consume("g", InboxConsumer("scale", engine, Effects(name, recorder)))
    await traffic.until(lambda served: shared_fairly(served, names), "a 2/1/1 split")
    assert recorder.overlaps == []


async def test_rabbitmq_queues_declared_by_an_earlier_version_still_work(run_id: str) -> None:
    """Earlier versions declared RabbitMQ partition queues with x-single-active-consumer, which
    a live queue cannot drop and which makes RabbitMQ refuse exclusive consumers."""
    require("rabbitmq")
    from tidings.brokers.rabbitmq import RabbitMQBroker, partition_queue

    from .conftest import RabbitMQFactory

    factory = RabbitMQFactory()
    topology = Topology(
        name=f"legacy-{run_id}-{uuid.uuid4().hex[:6]}",
        groups=("g",),
        partitions=2,
        redelivery_after=1.0,
    )
    bus = Bus(factory, topology)
    try:
        setup = await factory.create(topology)
        bus.clients.append(setup)
        assert isinstance(setup, RabbitMQBroker)
        channel = await setup.connection.channel()
        await channel.declare_queue(
            partition_queue(topology, "g", 0),
            durable=True,
            arguments={"x-queue-type": "classic", "x-single-active-consumer": True},
        )
        await channel.close()
        publisher = await bus.client()  # declare() accepts the old queue, declares the rest
        received = Received()

        async def handler(delivery: Delivery) -> None:
            received.add(delivery, "legacy")

        consumer = await bus.client()
        await consumer.consume("g", handler)
        streams = [f"old-{i}" for i in range(6)]
        for n in range(5):
            await publisher.publish([probe(s, n) for s in streams])
        await eventually(lambda: len(received.keys()) == 30, "all 30 messages handled")
        for stream, seen in received.by_stream().items():
            assert seen == list(range(5)), f"{stream}: {seen}"
    finally:
        await bus.close()
        await factory.cleanup(topology)
