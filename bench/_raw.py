"""The raw clients of ``brokers.py``: each driver used directly, the plain way.

A batch published with the client's own acknowledgement (aio-pika publisher confirms, JetStream
PubAck, the XADD reply), consumed with an acknowledgement per message and no work, one queue /
consumer / stream. :func:`run` times publisher and consumer in one process (one client, as
before); :func:`run_split` with the consumer in a process of its own, the layout the outbox
path's process-per-stage run uses, so that the two can be compared like for like.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from _clock import Lap, Stopwatch, process_cpu, wait_for
from tidings.interpreter import tune_collector
from tidings.testing.services import NATS_URL, RABBITMQ_URL, REDIS_URL

if TYPE_CHECKING:  # types only: the clients are imported where used (a run needs one)
    from multiprocessing.sharedctypes import Synchronized
    from multiprocessing.synchronize import Event

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

BATCH = 100
#: Messages each client fetches per read (RabbitMQ's prefetch count, a NATS fetch, a Redis
#: XREADGROUP COUNT).
FETCH = 256
PAYLOAD = b'{"stream":"bench","n":0,"pad":"' + b"x" * 200 + b'"}'


class RawClient(Protocol):
    """One connection to the broker, publishing and/or consuming one destination."""

    async def open(self, name: str, *, declare: bool) -> None:
        """Connect; with ``declare``, create the destination (the consumer's group included)."""

    async def subscribe(self) -> None:
        """Start consuming (messages are counted from now on)."""

    async def publish(self, count: int) -> None:
        """Publish ``count`` messages in batches of :data:`BATCH`, each batch confirmed."""

    async def received(self, count: int) -> None:
        """Return once ``count`` messages have been consumed and acknowledged."""

    async def close(self, *, delete: bool) -> None: ...


class _Consuming:
    """What the clients share: the count of messages consumed so far and the task consuming
    them (where the driver does not call back)."""

    name = ""
    count = 0
    consumer: asyncio.Task[None] | None = None

    async def received(self, count: int) -> None:
        await wait_for(lambda: self.count >= count, f"{type(self).__name__} consumer")

    async def stop_consuming(self) -> None:
        if self.consumer is not None:
            self.consumer.cancel()
            await asyncio.gather(self.consumer, return_exceptions=True)


class RawRabbitMQ(_Consuming):
    connection: AbstractConnection
    channel: AbstractChannel
    queue: AbstractQueue
    #: The consumer, once subscribed: cancelled before the queue is deleted.
    consumer_tag: ConsumerTag | None = None

    async def open(self, name: str, *, declare: bool) -> None:
        import aio_pika

        self.name, self.count = name, 0
        self.connection = await aio_pika.connect(RABBITMQ_URL)
        self.channel = await self.connection.channel(publisher_confirms=True)
        await self.channel.set_qos(prefetch_count=FETCH)
        # Declaring is idempotent: both sides declare the same durable queue.
        self.queue = await self.channel.declare_queue(name, durable=True)

    async def subscribe(self) -> None:
        async def on_message(message: AbstractIncomingMessage) -> None:
            self.count += 1
            await message.ack()

        self.consumer_tag = await self.queue.consume(on_message)

    async def publish(self, count: int) -> None:
        import aio_pika

        exchange = self.channel.default_exchange
        for start in range(0, count, BATCH):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(PAYLOAD, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=self.name,
                    )
                    for _ in range(min(BATCH, count - start))
                )
            )

    async def close(self, *, delete: bool) -> None:
        # The consumer is cancelled first: a queue deleted under its consumer has the broker
        # cancel it, which aiormq logs as a warning.
        if self.consumer_tag is not None:
            await self.queue.cancel(self.consumer_tag)
            self.consumer_tag = None
        if delete:
            await self.queue.delete(if_unused=False, if_empty=False)
        await self.connection.close()


class RawNats(_Consuming):
    client: NatsClient
    js: JetStreamContext
    #: The pull consumer, once subscribed: unsubscribed before the stream is deleted.
    subscription: JetStreamContext.PullSubscription | None = None

    async def open(self, name: str, *, declare: bool) -> None:
        import nats

        self.name, self.count = name, 0
        self.client = await nats.connect(NATS_URL)
        self.js = self.client.jetstream()
        if declare:
            await self.js.add_stream(name=name, subjects=[f"{name}.x"])

    async def subscribe(self) -> None:
        import nats

        name = self.name
        subscription = await self.js.pull_subscribe(f"{name}.x", durable="raw", stream=name)
        self.subscription = subscription

        async def consume() -> None:
            while True:
                try:
                    messages = await subscription.fetch(batch=FETCH, timeout=1)
                except nats.errors.TimeoutError:
                    continue
                for message in messages:
                    await message.ack()
                self.count += len(messages)

        self.consumer = asyncio.create_task(consume())

    async def publish(self, count: int) -> None:
        for start in range(0, count, BATCH):
            futures = [
                await self.js.publish_async(f"{self.name}.x", PAYLOAD)
                for _ in range(min(BATCH, count - start))
            ]
            await asyncio.gather(*futures)

    async def close(self, *, delete: bool) -> None:
        await self.stop_consuming()
        if self.subscription is not None:
            await self.subscription.unsubscribe()
            self.subscription = None
        if delete:
            await self.js.delete_stream(self.name)
        await self.client.close()


class RawRedis(_Consuming):
    client: Redis

    async def open(self, name: str, *, declare: bool) -> None:
        import redis.asyncio as aioredis

        self.name, self.count = name, 0
        self.client = aioredis.Redis.from_url(REDIS_URL)
        if declare:
            await self.client.xgroup_create(name, "g", id="0", mkstream=True)

    async def subscribe(self) -> None:
        async def consume() -> None:
            while True:
                # RESP2: [[key, [(id, fields), ...]]] (redis-py's annotation is wider).
                reply: Any = await self.client.xreadgroup(
                    "g", "c", {self.name: ">"}, count=FETCH, block=1000
                )
                for _, entries in reply or []:
                    if entries:
                        await self.client.xack(
                            self.name, "g", *(entry_id for entry_id, _ in entries)
                        )
                        self.count += len(entries)

        self.consumer = asyncio.create_task(consume())

    async def publish(self, count: int) -> None:
        for start in range(0, count, BATCH):
            pipeline = self.client.pipeline(transaction=False)
            for _ in range(min(BATCH, count - start)):
                pipeline.xadd(self.name, {b"body": PAYLOAD})
            await pipeline.execute()

    async def close(self, *, delete: bool) -> None:
        await self.stop_consuming()
        if delete:
            await self.client.delete(self.name)
        await self.client.aclose()


CLIENTS: dict[str, type[RawClient]] = {
    "rabbitmq": RawRabbitMQ,
    "nats": RawNats,
    "redis": RawRedis,
}


async def run(kind: str, count: int) -> Lap:
    """One client publishing and consuming concurrently in this process."""
    client = CLIENTS[kind]()
    await client.open(f"bench-raw-{uuid.uuid4().hex[:8]}", declare=True)
    try:
        await client.subscribe()
        stopwatch = Stopwatch()
        await client.publish(count)
        await client.received(count)
        return stopwatch.lap(count)
    finally:
        await client.close(delete=True)


def _consumer_process(
    kind: str, name: str, count: int, tune: bool, ready: Event, done: Synchronized[float]
) -> None:
    """Consume ``count`` messages of ``name``; ``done`` gets the time the last was acked."""
    if tune:
        tune_collector()

    async def consume() -> None:
        client = CLIENTS[kind]()
        await client.open(name, declare=False)
        await client.subscribe()
        ready.set()
        await client.received(count)
        done.value = time.perf_counter()  # CLOCK_MONOTONIC on Linux: one clock for the host
        await client.close(delete=False)

    asyncio.run(consume())


async def run_split(kind: str, count: int, tune: bool) -> tuple[Lap, float]:
    """This process publishing, a process of its own consuming (its collector tuned as this
    one's when ``tune``); the clock runs from the first publish to the consumer's last
    acknowledgement. Returns the lap (its ``cpu`` is both processes' together) and the
    consumer's CPU per event."""
    name = f"bench-raw-{uuid.uuid4().hex[:8]}"
    client = CLIENTS[kind]()
    await client.open(name, declare=True)
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Value("d", 0.0)
    process = context.Process(target=_consumer_process, args=(kind, name, count, tune, ready, done))
    try:
        process.start()
        await wait_for(ready.is_set, f"raw {kind} consumer process start")
        pid = process.pid or 0
        consumer_before = process_cpu(pid) or 0.0
        stopwatch = Stopwatch()
        await client.publish(count)
        await wait_for(lambda: bool(done.value) or not process.is_alive(), f"raw {kind}")
        # Read at once: the consumer process is closing its connection by now.
        lap, consumer_after = stopwatch.lap(count), process_cpu(pid) or 0.0
        if not done.value:
            raise SystemExit(f"bench: the raw {kind} consumer process died")
        await asyncio.to_thread(process.join, 30)
        consumer = (consumer_after - consumer_before) / count
        elapsed = done.value - stopwatch.wall
        return Lap(count / elapsed, lap.cpu + consumer, lap.host), consumer
    finally:
        if process.is_alive():
            process.terminate()
        await client.close(delete=True)
