"""The broker contract: one test suite every broker adapter must pass, shipped for third parties.

Use it by subclassing :class:`BrokerContract` in a test module and providing a
``broker_factory`` fixture that returns a :class:`BrokerFactory` for your adapter::

    class TestMyBroker(BrokerContract):
        @pytest.fixture
        def broker_factory(self) -> BrokerFactory:
            return MyBrokerFactory("mybroker://localhost")

Every test declares a bus of its own (a unique name), and the factory's ``cleanup`` deletes it
afterwards. Nothing is timed: tests wait for conditions, with a generous deadline that only
turns a hang into a failure naming what never happened.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tidings.brokers.inbox import InboxConsumer, inbox_metadata, inbox_table
from tidings.brokers.port import (
    DEAD_LETTER_REASON,
    Broker,
    Delivery,
    Topology,
    partition_of,
)
from tidings.brokers.wire import HEADERS, decode_message, encode_headers
from tidings.core.codec import default_codec
from tidings.core.envelope import Envelope
from tidings.core.events import event
from tidings.core.ids import uuid7
from tidings.core.messages import StoredEvent
from tidings.errors import BrokerError, MessageRejected, PublishNotConfirmed
from tidings.integration.signing import Keyring, Signer, SigningKey, Verifier

#: Deadline for conditions the tests wait on; only reached when something is broken.
WAIT_LIMIT = 60.0


@event(name="tidings.contract.Probe", version=1)
class Probe:
    """The event the contract suite sends around."""

    stream: str
    n: int


class BrokerFactory(Protocol):
    """What the contract needs to know about an adapter beyond the port."""

    name: str

    async def create(self, topology: Topology) -> Broker:
        """A new, connected broker client (its own connection) for ``topology``."""
        ...

    async def kill(self, broker: Broker) -> None:
        """Make the client vanish like a crashed process: no ack, no goodbye."""
        ...

    async def drop_connection(self, broker: Broker) -> None:
        """Cut the client's network connection; the client is expected to reconnect."""
        ...

    async def cleanup(self, topology: Topology) -> None:
        """Delete everything the bus created on the server."""
        ...


async def eventually(condition: Callable[[], bool], what: str, limit: float = WAIT_LIMIT) -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"never happened: {what}")
        await asyncio.sleep(0.02)


def probe(stream: str, n: int, *, producer: str = "contract") -> StoredEvent:
    """A stored Probe event: version ``n`` of ``stream``."""
    envelope = Envelope(
        event=Probe(stream, n),
        event_id=uuid7(),
        event_type="tidings.contract.Probe",
        event_version=1,
        occurred_at=datetime.now(UTC),
        stream_id=stream,
        stream_version=n,
        correlation_id=uuid7(),
        causation_id=None,
        producer=producer,
    )
    return StoredEvent(
        event_id=envelope.event_id,
        event_type=envelope.event_type,
        event_version=1,
        stream_id=stream,
        stream_version=n,
        occurred_at=envelope.occurred_at,
        correlation_id=envelope.correlation_id,
        causation_id=None,
        producer=producer,
        payload=default_codec.encode_payload(envelope.event),
    )


@dataclass
class Received:
    """What handlers saw, in the order they saw it."""

    items: list[tuple[str, int, int, str]] = field(default_factory=list)

    def add(self, delivery: Delivery, consumer: str) -> StoredEvent:
        stored = decode_message(delivery.headers, delivery.body)
        assert stored.stream_id is not None and stored.stream_version is not None
        self.items.append((stored.stream_id, stored.stream_version, delivery.attempt, consumer))
        return stored

    def handler(self, consumer: str) -> Callable[[Delivery], Awaitable[None]]:
        """A broker handler that only notes each delivery, as ``consumer``."""

        async def note(delivery: Delivery) -> None:
            self.add(delivery, consumer)

        return note

    def keys(self) -> set[tuple[str, int]]:
        return {(stream, n) for stream, n, _, _ in self.items}

    def by_stream(self) -> dict[str, list[int]]:
        streams: dict[str, list[int]] = {}
        for stream, n, _, _ in self.items:
            streams.setdefault(stream, []).append(n)
        return streams


_counter = itertools.count(1)


class Bus:
    """One test's bus: its topology and every client opened on it (closed at the end)."""

    def __init__(self, factory: BrokerFactory, topology: Topology) -> None:
        self.factory = factory
        self.topology = topology
        self.clients: list[Broker] = []

    async def client(self) -> Broker:
        broker = await self.factory.create(self.topology)
        self.clients.append(broker)
        await broker.declare()
        return broker

    async def publish_all(self, broker: Broker, messages: Sequence[StoredEvent]) -> None:
        """Publish, retrying on broker errors (what the relay does): never gives up early."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_LIMIT
        while True:
            try:
                await broker.publish(messages)
                return
            except BrokerError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        for broker in self.clients:
            try:
                await broker.close()
            except Exception:  # a client the test already killed
                continue


class BrokerContract:
    """The contract tests (see the module docstring)."""

    #: Partitions used by the tests; small so that streams share partitions.
    partitions = 4

    def make_topology(self, **overrides: Any) -> Topology:
        name = f"contract-{uuid.uuid4().hex[:8]}-{next(_counter)}"
        settings: dict[str, Any] = {
            "name": name,
            "groups": ("g",),
            "partitions": self.partitions,
            "max_deliveries": 3,
            "redelivery_after": 1.0,
            "prefetch": 16,
        }
        settings.update(overrides)
        return Topology(**settings)

    @pytest.fixture
    async def bus(self, broker_factory: BrokerFactory) -> AsyncIterator[Bus]:
        bus = Bus(broker_factory, self.make_topology())
        try:
            yield bus
        finally:
            await bus.close()
            await broker_factory.cleanup(bus.topology)

    @pytest.fixture
    async def small_bus(self, broker_factory: BrokerFactory) -> AsyncIterator[Bus]:
        """A bus with a 64 KiB message limit, for the oversized-message tests."""
        bus = Bus(broker_factory, self.make_topology(max_message_bytes=64 * 1024))
        try:
            yield bus
        finally:
            await bus.close()
            await broker_factory.cleanup(bus.topology)

    @pytest.fixture
    async def inbox_engine(self, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
        from tidings.persistence.sqlite import async_sqlite_engine

        engine = async_sqlite_engine(tmp_path / "inbox.sqlite")
        async with engine.begin() as connection:
            await connection.run_sync(inbox_metadata.create_all)
            await connection.run_sync(_effects_metadata.create_all)
        try:
            yield engine
        finally:
            await engine.dispose()

    # -- publishing --------------------------------------------------------------------------

    async def test_publish_is_confirmed_and_every_message_arrives(self, bus: Bus) -> None:
        publisher = await bus.client()
        consumer_client = await bus.client()
        received = Received()

        await consumer_client.consume("g", received.handler("c"))
        messages = [probe(f"s{i % 7}", i // 7) for i in range(70)]
        await publisher.publish(messages)
        expected = {(m.stream_id, m.stream_version) for m in messages}
        await eventually(lambda: received.keys() == expected, "all 70 messages handled")

    async def test_one_large_publication_arrives_whole_and_in_stream_order(self, bus: Bus) -> None:
        """Adapters may split a publication (per partition, per chunk); order must survive."""
        publisher = await bus.client()
        consumer_client = await bus.client()
        received = Received()

        await consumer_client.consume("g", received.handler("c"))
        messages = [probe("big", n) for n in range(600)] + [
            probe(f"s{i % 5}", i // 5) for i in range(100)
        ]
        await publisher.publish(messages)
        expected = {(m.stream_id, m.stream_version) for m in messages}
        await eventually(lambda: received.keys() == expected, "all 700 messages handled")
        streams = received.by_stream()
        assert streams["big"] == list(range(600)), "stream 'big' handled out of order"
        for stream in (f"s{i}" for i in range(5)):
            assert streams[stream] == list(range(20)), f"{stream} handled out of order"

    async def test_metadata_and_trace_headers_travel(self, bus: Bus) -> None:
        publisher = await bus.client()
        consumer_client = await bus.client()
        seen: list[StoredEvent] = []
        original = probe("trace", 1)
        original = replace(
            original,
            causation_id=uuid7(),
            headers={
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "x-app": "yes",
            },
        )

        async def handler(delivery: Delivery) -> None:
            seen.append(decode_message(delivery.headers, delivery.body))

        await consumer_client.consume("g", handler)
        await publisher.publish([original])
        await eventually(lambda: len(seen) == 1, "the message arrived")
        assert seen[0].metadata() == original.metadata()
        assert seen[0].payload == original.payload
        assert seen[0].headers["traceparent"] == original.headers["traceparent"]
        assert seen[0].headers["x-app"] == "yes"

    async def test_declare_is_idempotent(self, bus: Bus) -> None:
        first = await bus.client()
        await first.declare()
        second = await bus.client()
        await second.declare()
        received = Received()

        await second.consume("g", received.handler("c"))
        await first.publish([probe("idem", 1)])
        await eventually(lambda: len(received.items) == 1, "the message arrived once")

    async def test_publishing_before_declare_fails_loudly_or_keeps_the_messages(
        self, bus: Bus
    ) -> None:
        early = await bus.factory.create(bus.topology)
        bus.clients.append(early)
        messages = [probe("early", n) for n in range(3)]
        try:
            await early.publish(messages)
            kept = True  # the broker stored them anyway (Redis creates streams on demand)
        except BrokerError:
            kept = False
        consumer_client = await bus.client()  # declares the bus
        received = Received()

        await consumer_client.consume("g", received.handler("c"))
        if not kept:
            await bus.publish_all(early, messages)
        await eventually(lambda: len(received.keys()) == 3, "every early message, exactly")
        assert received.by_stream()["early"] == [0, 1, 2]

    async def test_oversized_publication_is_refused(self, small_bus: Bus) -> None:
        publisher = await small_bus.client()
        big = replace(
            probe("big", 1), payload=b'{"stream":"big","n":1,"x":"' + b"a" * 70_000 + b'"}'
        )
        with pytest.raises(PublishNotConfirmed, match="exceeds the bus limit"):
            await publisher.publish([big])

    async def test_consuming_an_undeclared_group_is_a_clear_error(self, bus: Bus) -> None:
        client = await bus.client()
        with pytest.raises(Exception, match="not declared"):
            await client.consume("nope", _never_called)

    # -- acknowledgement after the handler ---------------------------------------------------

    async def test_handler_failure_redelivers_in_order(self, bus: Bus) -> None:
        publisher = await bus.client()
        consumer_client = await bus.client()
        received = Received()
        failed: set[int] = set()

        async def handler(delivery: Delivery) -> None:
            stored = decode_message(delivery.headers, delivery.body)
            if stored.stream_version == 2 and 2 not in failed:
                failed.add(2)
                raise RuntimeError("transient failure")
            received.add(delivery, "c")

        await consumer_client.consume("g", handler)
        await publisher.publish([probe("one", n) for n in range(6)])
        await eventually(lambda: len(received.items) == 6, "all six handled")
        assert received.by_stream()["one"] == [0, 1, 2, 3, 4, 5]
        assert failed == {2}

    async def test_inbox_commits_effects_once_and_acks_after_commit(
        self, bus: Bus, inbox_engine: AsyncEngine
    ) -> None:
        publisher = await bus.client()
        consumer_client = await bus.client()
        calls: list[int] = []

        async def apply(envelope: Envelope[Any], session: AsyncSession) -> None:
            calls.append(envelope.event.n)
            await session.execute(insert(_effects).values(event_id=str(envelope.event_id)))
            if len(calls) == 1:
                raise RuntimeError("crash after writing, before commit")

        runner = InboxConsumer("contract-inbox", inbox_engine, apply)
        await consumer_client.consume("g", runner)
        message = probe("inbox", 1)
        await publisher.publish([message])
        await eventually(lambda: runner.handled == 1, "handled after one failure")
        # The same message again, as a broker-level duplicate (publish_raw bypasses the
        # publisher-side deduplication some brokers do): acked without running the handler.
        await publisher.publish_raw(
            partition_of(message.stream_id, bus.topology.partitions),
            encode_headers(message),
            message.payload,
        )
        await eventually(lambda: runner.duplicates == 1, "the duplicate was recognised")
        assert calls == [1, 1]
        async with inbox_engine.connect() as connection:
            effects = await connection.scalar(select(func.count()).select_from(_effects))
            inbox_rows = await connection.scalar(select(func.count()).select_from(inbox_table))
        assert effects == 1  # the failed attempt's write rolled back with its inbox row
        assert inbox_rows == 1

    async def test_failing_past_max_deliveries_dead_letters_and_moves_on(self, bus: Bus) -> None:
        publisher = await bus.client()
        consumer_client = await bus.client()
        received = Received()
        attempts: list[int] = []

        async def handler(delivery: Delivery) -> None:
            stored = decode_message(delivery.headers, delivery.body)
            if stored.stream_version == 1:
                attempts.append(delivery.attempt)
                raise ValueError("poison")
            received.add(delivery, "c")

        await consumer_client.consume("g", handler)
        await publisher.publish([probe("poison", n) for n in range(3)])
        await eventually(lambda: len(received.items) == 2, "the messages around the poison one")
        assert received.by_stream()["poison"] == [0, 2]
        assert len(attempts) == bus.topology.max_deliveries
        dead = await consumer_client.dead_letters("g")
        assert len(dead) == 1
        assert "ValueError: poison" in dead[0].headers[DEAD_LETTER_REASON]
        assert decode_message(dead[0].headers, dead[0].body).stream_version == 1

    async def test_rejected_message_is_dead_lettered_at_once(self, bus: Bus) -> None:
        publisher = await bus.client()
        consumer_client = await bus.client()
        calls: list[int] = []

        async def handler(delivery: Delivery) -> None:
            calls.append(delivery.attempt)
            raise MessageRejected("not for us")

        await consumer_client.consume("g", handler)
        await publisher.publish([probe("reject", 1)])
        dead: list[Delivery] = []

        async def dead_lettered() -> bool:
            dead[:] = await consumer_client.dead_letters("g")
            return bool(dead)

        await _await_true(dead_lettered, "the rejected message reached the dead letters")
        assert calls == [1]
        assert dead[0].headers[DEAD_LETTER_REASON] == "not for us"

    async def test_dead_letters_keep_the_original_bytes(self, bus: Bus) -> None:
        publisher = await bus.client()
        consumer_client = await bus.client()
        original = probe("bytes", 1)

        async def handler(delivery: Delivery) -> None:
            raise MessageRejected("inspect me")

        await consumer_client.consume("g", handler)
        await publisher.publish([original])
        dead: list[Delivery] = []

        async def dead_lettered() -> bool:
            dead[:] = await consumer_client.dead_letters("g")
            return bool(dead)

        await _await_true(dead_lettered, "dead-lettered")
        assert dead[0].body == original.payload
        for name, value in encode_headers(original).items():
            assert dead[0].headers[name] == value

    # -- crashes and connection loss ---------------------------------------------------------

    async def test_message_held_by_a_killed_consumer_goes_to_another(self, bus: Bus) -> None:
        publisher = await bus.client()
        doomed = await bus.client()
        started = asyncio.Event()
        never = asyncio.Event()
        received = Received()

        async def stuck(delivery: Delivery) -> None:
            started.set()
            await never.wait()

        async def healthy(delivery: Delivery) -> None:
            received.add(delivery, "survivor")

        await doomed.consume("g", stuck)
        await publisher.publish([probe("crash", 1)])
        await eventually(started.is_set, "the first consumer received the message")
        survivor = await bus.client()
        await survivor.consume("g", healthy)
        await bus.factory.kill(doomed)
        await eventually(lambda: received.keys() == {("crash", 1)}, "redelivered to the survivor")

    async def test_per_stream_order_with_four_competing_consumers(self, bus: Bus) -> None:
        publisher = await bus.client()
        received = Received()
        failed: set[tuple[str, int]] = set()

        def handler_for(name: str) -> Callable[[Delivery], Awaitable[None]]:
            async def handler(delivery: Delivery) -> None:
                stored = decode_message(delivery.headers, delivery.body)
                key = (stored.stream_id or "", stored.stream_version or 0)
                # Some messages fail once: their retry must still come before their successors.
                if key[1] % 4 == 1 and key not in failed:
                    failed.add(key)
                    raise RuntimeError("fail once")
                received.add(delivery, name)
                await asyncio.sleep(0)

            return handler

        for index in range(4):
            client = await bus.client()
            await client.consume("g", handler_for(f"consumer-{index}"))
        streams = [f"order-{i}" for i in range(12)]
        versions = 12
        for n in range(versions):
            await publisher.publish([probe(stream, n) for stream in streams])
        total = len(streams) * versions
        await eventually(lambda: len(received.keys()) == total, f"all {total} messages handled")
        for stream, seen in received.by_stream().items():
            assert seen == list(range(versions)), f"{stream} handled out of order: {seen}"

    async def test_competing_consumers_share_the_partitions(self, bus: Bus) -> None:
        """A second consumer gets a fair share; when the first leaves, the second takes all."""
        publisher = await bus.client()
        received = Received()
        partitions = bus.topology.partitions
        streams = _streams_on_every_partition(partitions)
        rounds = itertools.count(1)

        def handler_for(name: str) -> Callable[[Delivery], Awaitable[None]]:
            async def handler(delivery: Delivery) -> None:
                received.add(delivery, name)

            return handler

        async def until(condition: Callable[[dict[int, set[str]]], bool], what: str) -> None:
            """Send rounds of traffic (one message per stream) until one is served as wanted."""
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_LIMIT
            while loop.time() < deadline:
                n = next(rounds)
                await bus.publish_all(publisher, [probe(stream, n) for stream in streams])
                await eventually(_round_handled(received, n, len(streams)), f"round {n} handled")
                served: dict[int, set[str]] = {p: set() for p in range(partitions)}
                for stream, m, _, consumer in received.items:
                    if m == n:
                        served[partition_of(stream, partitions)].add(consumer)
                if condition(served):
                    return
            pytest.fail(f"never happened: {what}")

        def shared(served: dict[int, set[str]]) -> bool:
            if any(len(by) != 1 for by in served.values()):
                return False
            counts = [sum(1 for by in served.values() if name in by) for name in ("A", "B")]
            return min(counts) >= 1 and max(counts) - min(counts) <= 1

        first = await bus.client()
        await first.consume("g", handler_for("A"))
        second = await bus.client()
        await second.consume("g", handler_for("B"))
        await until(shared, "both consumers serving their share of the partitions")
        await first.close()
        await until(lambda served: all(by == {"B"} for by in served.values()), "B serving all")
        for stream, seen in received.by_stream().items():
            assert seen == sorted(seen), f"{stream} handled out of order: {seen}"

    async def test_connection_drop_mid_stream_loses_nothing(self, bus: Bus) -> None:
        publisher = await bus.client()
        consumer_client = await bus.client()
        received = Received()

        await consumer_client.consume("g", received.handler("c"))
        messages = [probe(f"drop-{i % 5}", i // 5) for i in range(100)]
        for index, batch_start in enumerate(range(0, len(messages), 10)):
            if index == 4:
                await bus.factory.drop_connection(consumer_client)
                await bus.factory.drop_connection(publisher)
            await bus.publish_all(publisher, messages[batch_start : batch_start + 10])
        expected = {(m.stream_id, m.stream_version) for m in messages}
        await eventually(lambda: received.keys() == expected, "every message after the drop")
        for stream, seen in received.by_stream().items():
            # Redelivery after the drop may repeat a message, never skip or reorder the stream.
            deduplicated = [n for i, n in enumerate(seen) if n not in seen[:i]]
            assert deduplicated == sorted(deduplicated), f"{stream}: {seen}"

    # -- hostile input -------------------------------------------------------------------------

    async def test_hostile_input_is_dead_lettered_and_the_worker_keeps_going(
        self, small_bus: Bus, inbox_engine: AsyncEngine
    ) -> None:
        bus = small_bus
        publisher = await bus.client()
        consumer_client = await bus.client()
        good_key = SigningKey("k1", os.urandom(32))
        other_key = SigningKey("k-attacker", os.urandom(32))
        signer = Signer(Keyring([good_key]))
        handled: list[tuple[str, int]] = []

        async def apply(envelope: Envelope[Any], session: AsyncSession) -> None:
            handled.append((envelope.event.stream, envelope.event.n))

        runner = InboxConsumer(
            "contract-hostile",
            inbox_engine,
            apply,
            verifier=Verifier(Keyring([good_key]), max_age=timedelta(hours=1)),
        )
        await consumer_client.consume("g", runner)

        stream = "hostile"
        partition = partition_of(stream, bus.topology.partitions)
        signed = signer.sign(probe(stream, 1))
        headers = encode_headers(signed)
        plain = probe(stream, 1)
        truncated = signer.sign(replace(plain, payload=plain.payload[: len(plain.payload) // 2]))
        hostile: list[tuple[str, dict[str, str], bytes]] = [
            ("header tidings-event-id is missing", {}, os.urandom(200)),
            # Signed as truncated (a broken producer), so it is the JSON that fails.
            ("not valid JSON", encode_headers(truncated), truncated.payload),
            ("more than the bus limit", headers, b"x" * (70 * 1024)),
            (
                "must be an integer",
                {**headers, HEADERS["event_version"]: "one"},
                signed.payload,
            ),
            # A digit to str.isdigit(), not to int(): rejected at once, not retried.
            (
                "must be an integer",
                {**headers, HEADERS["stream_version"]: "\u00b2"},
                signed.payload,
            ),
            ("is not a UUID", {**headers, HEADERS["event_id"]: "'; DROP TABLE"}, signed.payload),
            ("is not signed", encode_headers(probe(stream, 1)), signed.payload),
            (
                "unknown key",
                encode_headers(Signer(Keyring([other_key])).sign(probe(stream, 1))),
                signed.payload,
            ),
            (
                "signature does not match",
                {**headers, "tidings-signature": "A" * 43},
                signed.payload,
            ),
            ("signature does not match", headers, signed.payload.replace(b'"n":1', b'"n":9')),
            (
                "possible replay",
                encode_headers(
                    Signer(
                        Keyring([good_key]),
                        clock=lambda: datetime.now(UTC) - timedelta(days=2),
                    ).sign(probe(stream, 1))
                ),
                signed.payload,
            ),
            (
                "unknown event type",
                encode_headers(signer.sign(replace(probe(stream, 1), event_type="nobody.Knows"))),
                signed.payload,
            ),
        ]
        for _, message_headers, body in hostile:
            await publisher.publish_raw(partition, message_headers, body)
        # A good message behind them in the same partition proves the worker kept going.
        good = signer.sign(probe(stream, 2))
        await publisher.publish([good])
        await eventually(lambda: handled == [(stream, 2)], "the good message after the bad ones")
        dead: list[Delivery] = []

        async def all_dead() -> bool:
            dead[:] = await consumer_client.dead_letters("g")
            return len(dead) >= len(hostile)

        await _await_true(all_dead, f"{len(hostile)} dead letters")
        reasons = [d.headers[DEAD_LETTER_REASON] for d in dead]
        for (expected, _, _), reason in zip(hostile, reasons, strict=True):
            assert expected in reason, f"expected {expected!r} in {reason!r}"
        assert handled == [(stream, 2)]


def _round_handled(received: Received, n: int, expected: int) -> Callable[[], bool]:
    return lambda: sum(1 for item in received.items if item[1] == n) >= expected


def _streams_on_every_partition(partitions: int, per_partition: int = 2) -> list[str]:
    """Stream names, ``per_partition`` of them on each partition."""
    chosen: dict[int, list[str]] = {p: [] for p in range(partitions)}
    for i in itertools.count():
        name = f"share-{i}"
        names = chosen[partition_of(name, partitions)]
        if len(names) < per_partition:
            names.append(name)
        if all(len(names) == per_partition for names in chosen.values()):
            return [name for names in chosen.values() for name in names]
    raise AssertionError("unreachable")


async def _never_called(delivery: Delivery) -> None:
    raise AssertionError("handler must not be called")


async def _await_true(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"never happened: {what}")
        await asyncio.sleep(0.05)


_effects_metadata = MetaData()
_effects = Table(
    "contract_effects",
    _effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
)
