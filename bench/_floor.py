"""The drivers' floor for ``brokers.py``: the same guarantees, written straight on the drivers.

What any library giving the outbox path's guarantees must at least do, done here with nothing
but psycopg and the broker's own client, in the cheapest form each offers:

* **writers**: one transaction per 100 events appends them to a log table (one ``INSERT``, one
  array per column);
* **relay**: reads the log past its position (pages of up to 1,000 rows), publishes them with
  the client's own confirmation (as the raw ceiling does), then stores its new position;
* **consumer**: receives, decodes the payload, inserts the batch's inbox rows (``ON CONFLICT DO
  NOTHING RETURNING``: deduplication) and one effect row per new event in one transaction, and
  acknowledges only after that commit.

Messages carry the event id in their body's first 16 bytes (no headers at all), on one queue,
subject or stream, with one consumer: cheaper than anything partitioned. It has no gap
safety, no retries, no translation, no signatures, no dead letters and no crash recovery; it is
a lower bound, not a design. The ceiling minus this floor is what the guarantees themselves
cost with these drivers in one Python process; ``brokers.py`` prints its share of the raw
ceiling beside tidings'.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import psycopg

from _clock import Lap, Stopwatch
from _raw import BATCH, FETCH  # publishing and fetching as the raw clients do

if TYPE_CHECKING:  # types only: the clients are imported where used (a run needs one)
    from aio_pika.abc import (
        AbstractChannel,
        AbstractConnection,
        AbstractIncomingMessage,
        AbstractQueue,
        ConsumerTag,
    )
    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamContext
    from redis.asyncio import Redis

PAGE = 1000
ID_BYTES = 16

#: The floor's tables, in the bench's schema (created and dropped with it).
DDL = (
    "CREATE TABLE bench_floor_log (position BIGSERIAL PRIMARY KEY, event_id UUID NOT NULL,"
    " stream TEXT NOT NULL, version INTEGER NOT NULL, payload BYTEA NOT NULL)",
    "CREATE TABLE bench_floor_cursor (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
    "CREATE TABLE bench_floor_inbox (consumer TEXT NOT NULL, message_id UUID NOT NULL,"
    " PRIMARY KEY (consumer, message_id))",
)
APPEND = (
    "INSERT INTO bench_floor_log (event_id, stream, version, payload)"
    " SELECT * FROM unnest(%s::uuid[], %s::text[], %s::integer[], %s::bytea[])"
)
PAGE_AFTER = (
    "SELECT position, event_id, payload FROM bench_floor_log WHERE position > %s"
    " ORDER BY position LIMIT %s"
)
ADVANCE = "UPDATE bench_floor_cursor SET position = %s WHERE name = 'relay'"
RECORD = (
    "INSERT INTO bench_floor_inbox (consumer, message_id)"
    " SELECT 'floor', * FROM unnest(%s::uuid[]) ON CONFLICT DO NOTHING RETURNING message_id"
)
EFFECTS = (
    "INSERT INTO bench_broker_effects (stream, n)"
    " SELECT * FROM unnest(%s::varchar[], %s::integer[])"
)


class Counted(msgspec.Struct):
    stream: str
    n: int


class Pipe(Protocol):
    """One broker through its raw client: confirmed publishing, batched receiving."""

    async def publish(self, bodies: list[bytes]) -> None:
        """Return once the broker confirmed every body."""

    async def receive(self) -> tuple[list[bytes], Callable[[], Awaitable[object]]]:
        """Wait for a batch of bodies; the callable acknowledges all of them."""

    async def close(self) -> None: ...


async def run(pipe: Pipe, dsn: str, schema: str, count: int, wait_limit: float = 120.0) -> Lap:
    """Writers, relay and consumer at once: their rate and CPU per event.

    ``dsn`` is a libpq URL; the floor's tables (:data:`DDL`) must exist in ``schema``, empty.
    """
    options = f"-c search_path={schema}"
    writer = await psycopg.AsyncConnection.connect(dsn, options=options)
    relay = await psycopg.AsyncConnection.connect(dsn, options=options, autocommit=True)
    consumer = await psycopg.AsyncConnection.connect(dsn, options=options)
    encoder, decoder = msgspec.json.Encoder(), msgspec.json.Decoder(Counted)
    await relay.execute("INSERT INTO bench_floor_cursor VALUES ('relay', 0)")
    handled = 0

    async def write() -> None:
        for start in range(0, count, BATCH):
            numbers = range(start, min(start + BATCH, count))
            streams = [f"t{i % 64}" for i in numbers]
            versions = [i // 64 + 1 for i in numbers]
            payloads = [
                encoder.encode(Counted(s, v)) for s, v in zip(streams, versions, strict=True)
            ]
            ids = [uuid.uuid4() for _ in numbers]
            async with writer.transaction():
                await writer.execute(APPEND, (ids, streams, versions, payloads))

    async def forward() -> None:
        position, sent = 0, 0
        while sent < count:
            rows = await (await relay.execute(PAGE_AFTER, (position, PAGE))).fetchall()
            if not rows:
                await asyncio.sleep(0.001)
                continue
            await pipe.publish([event_id.bytes + payload for _, event_id, payload in rows])
            position = rows[-1][0]
            await relay.execute(ADVANCE, (position,))
            sent += len(rows)

    async def consume() -> None:
        nonlocal handled
        while handled < count:
            bodies, ack = await pipe.receive()
            ids = [uuid.UUID(bytes=body[:ID_BYTES]) for body in bodies]
            events = [decoder.decode(body[ID_BYTES:]) for body in bodies]
            async with consumer.transaction():
                cursor = await consumer.execute(RECORD, (ids,))
                fresh = {row[0] for row in await cursor.fetchall()}
                new = [e for i, e in zip(ids, events, strict=True) if i in fresh]
                await consumer.execute(EFFECTS, ([e.stream for e in new], [e.n for e in new]))
            await ack()
            handled += len(bodies)

    try:
        stopwatch = Stopwatch()
        await asyncio.wait_for(asyncio.gather(write(), forward(), consume()), wait_limit)
        return stopwatch.lap(count)
    finally:
        await pipe.close()
        for connection in (writer, relay, consumer):
            await connection.close()


# -- the brokers' raw clients ---------------------------------------------------------------------


class RabbitPipe:
    """aio-pika with publisher confirms, one durable queue, prefetch FETCH, ``ack(multiple)``."""

    connection: AbstractConnection
    channel: AbstractChannel
    name: str
    queue: AbstractQueue
    consumer_tag: ConsumerTag
    received: asyncio.Queue[AbstractIncomingMessage]

    @classmethod
    async def open(cls, url: str) -> RabbitPipe:
        import aio_pika

        self = cls()
        self.connection = await aio_pika.connect(url)
        self.name = f"bench-floor-{uuid.uuid4().hex[:8]}"
        self.channel = await self.connection.channel(publisher_confirms=True)
        await self.channel.set_qos(prefetch_count=FETCH)
        self.queue = await self.channel.declare_queue(self.name, durable=True)
        self.received = asyncio.Queue()
        self.consumer_tag = await self.queue.consume(self.received.put)
        return self

    async def publish(self, bodies: list[bytes]) -> None:
        import aio_pika

        await asyncio.gather(
            *(
                self.channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=self.name,
                )
                for body in bodies
            )
        )

    async def receive(self) -> tuple[list[bytes], Callable[[], Awaitable[object]]]:
        messages = [await self.received.get()]
        while not self.received.empty() and len(messages) < FETCH:
            messages.append(self.received.get_nowait())
        last = messages[-1]
        return [m.body for m in messages], lambda: last.ack(multiple=True)

    async def close(self) -> None:
        try:
            # Cancelled first: a queue deleted under its consumer has the broker cancel it,
            # which aiormq logs as a warning.
            await self.queue.cancel(self.consumer_tag)
            await self.queue.delete(if_unused=False, if_empty=False)
        finally:
            await self.connection.close()


class NatsPipe:
    """nats-py JetStream: ``publish_async`` and its PubAcks, a pull consumer fetching FETCH."""

    client: NatsClient
    js: JetStreamContext
    name: str
    subject: str
    subscription: JetStreamContext.PullSubscription

    @classmethod
    async def open(cls, url: str) -> NatsPipe:
        import nats

        self = cls()
        self.client = await nats.connect(url)
        self.js = self.client.jetstream()
        self.name = f"bench-floor-{uuid.uuid4().hex[:8]}"
        self.subject = f"{self.name}.x"
        await self.js.add_stream(name=self.name, subjects=[self.subject])
        self.subscription = await self.js.pull_subscribe(
            self.subject, durable="floor", stream=self.name
        )
        return self

    async def publish(self, bodies: list[bytes]) -> None:
        futures = [await self.js.publish_async(self.subject, body) for body in bodies]
        await asyncio.gather(*futures)

    async def receive(self) -> tuple[list[bytes], Callable[[], Awaitable[object]]]:
        import nats

        while True:
            try:
                messages = await self.subscription.fetch(batch=FETCH, timeout=1)
                break
            except nats.errors.TimeoutError:
                continue

        async def ack() -> None:
            for message in messages:
                await message.ack()

        return [m.data for m in messages], ack

    async def close(self) -> None:
        try:
            await self.subscription.unsubscribe()
            await self.js.delete_stream(self.name)
        finally:
            await self.client.close()


class RedisPipe:
    """redis-py asyncio: pipelined ``XADD`` (its reply confirms), ``XREADGROUP`` FETCH, ``XACK``."""

    client: Redis
    key: str

    @classmethod
    async def open(cls, url: str) -> RedisPipe:
        import redis.asyncio as aioredis

        self = cls()
        self.client = aioredis.Redis.from_url(url)
        self.key = f"bench-floor-{uuid.uuid4().hex[:8]}"
        await self.client.xgroup_create(self.key, "g", id="0", mkstream=True)
        return self

    async def publish(self, bodies: list[bytes]) -> None:
        pipeline = self.client.pipeline(transaction=False)
        for body in bodies:
            pipeline.xadd(self.key, {b"body": body})
        await pipeline.execute()

    async def receive(self) -> tuple[list[bytes], Callable[[], Awaitable[object]]]:
        while True:
            # RESP2: [[key, [(id, fields), ...]]], or None once the block ran out (redis-py's
            # annotation is wider: RESP3's dict form, and no None).
            reply: Any = await self.client.xreadgroup(
                "g", "c", {self.key: ">"}, count=FETCH, block=1000
            )
            entries: list[tuple[bytes, dict[bytes, bytes]]] = [
                entry for _, found in reply or [] for entry in found
            ]
            if entries:
                break
        ids = [entry_id for entry_id, _ in entries]
        return [fields[b"body"] for _, fields in entries], lambda: self.client.xack(
            self.key, "g", *ids
        )

    async def close(self) -> None:
        try:
            await self.client.delete(self.key)
        finally:
            await self.client.aclose()


PIPES: dict[str, Callable[[str], Awaitable[Pipe]]] = {
    "rabbitmq": RabbitPipe.open,
    "nats": NatsPipe.open,
    "redis": RedisPipe.open,
}
