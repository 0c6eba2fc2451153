"""Broker factories for the contract suite: the in-memory broker and the three real servers.

Each factory knows how to kill a client like a crashed process and how to cut its network
connection (the client must then reconnect on its own), using the broker's own means where it
has them (Redis ``CLIENT KILL``) and aborting the client's socket otherwise.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest

from tidings.brokers.memory import MemoryBroker, MemoryBrokerServer
from tidings.brokers.port import Broker, Delivery, Topology
from tidings.brokers.wire import decode_message
from tidings.core.messages import StoredEvent
from tidings.outbox.relay import Relay
from tidings.testing.broker_contract import BrokerFactory
from tidings.testing.services import NATS_URL, RABBITMQ_URL, REDIS_URL, require


class MemoryFactory:
    name = "memory"

    def __init__(self) -> None:
        self.server = MemoryBrokerServer()

    async def create(self, topology: Topology) -> Broker:
        broker = MemoryBroker(topology, self.server)
        await broker.connect()
        return broker

    async def kill(self, broker: Any) -> None:
        await broker.sever()

    async def drop_connection(self, broker: Any) -> None:
        await broker.drop_connection()

    async def cleanup(self, topology: Topology) -> None:
        self.server.delete(topology.name)


class RabbitMQFactory:
    name = "rabbitmq"

    async def create(self, topology: Topology) -> Broker:
        from tidings.brokers.rabbitmq import RabbitMQBroker

        broker = RabbitMQBroker(
            RABBITMQ_URL, topology, connection_name=f"tidings-test-{uuid.uuid4().hex}"
        )
        await broker.connect()
        return broker

    async def kill(self, broker: Any) -> None:
        await broker.abort()

    async def drop_connection(self, broker: Any) -> None:
        # The server's own admin tool closes the connection; aio-pika's robust connection must
        # reconnect and resubscribe by itself.
        listing = await _run("rabbitmqctl", "-q", "list_connections", "pid", "client_properties")
        pids = [
            line.split("\t", 1)[0]
            for line in listing.splitlines()
            if broker.connection_name in line
        ]
        assert pids, f"connection {broker.connection_name} not found by rabbitmqctl"
        for pid in pids:
            await _run("rabbitmqctl", "-q", "close_connection", pid, "contract test: drop")

    async def cleanup(self, topology: Topology) -> None:
        from tidings.brokers.rabbitmq import RabbitMQBroker

        broker = RabbitMQBroker(RABBITMQ_URL, topology)
        await broker.connect()
        try:
            await broker.delete()
        finally:
            await broker.close()


class NatsFactory:
    name = "nats"

    async def create(self, topology: Topology) -> Broker:
        from tidings.brokers.nats import NatsBroker

        broker = NatsBroker(NATS_URL, topology)
        await broker.connect()
        return broker

    async def kill(self, broker: Any) -> None:
        await broker.abort()

    async def drop_connection(self, broker: Any) -> None:
        # Abort the socket under nats-py: the client reconnects and resumes pulling.
        broker.client._transport._io_writer.transport.abort()

    async def cleanup(self, topology: Topology) -> None:
        from tidings.brokers.nats import NatsBroker

        broker = NatsBroker(NATS_URL, topology)
        await broker.connect()
        try:
            await broker.delete()
        finally:
            await broker.close()


class RedisFactory:
    name = "redis"

    async def create(self, topology: Topology) -> Broker:
        from tidings.brokers.redis import RedisBroker

        broker = RedisBroker(REDIS_URL, topology, connection_name=f"tidings-{topology.name}")
        await broker.connect()
        return broker

    async def kill(self, broker: Any) -> None:
        await broker.abort()

    async def drop_connection(self, broker: Any) -> None:
        # The server's own admin command: kill every connection this client opened.
        import redis.asyncio as aioredis

        admin = aioredis.Redis.from_url(REDIS_URL)
        try:
            clients = await admin.client_list()
            for client in clients:
                if client.get("name") == broker.connection_name:
                    await admin.client_kill_filter(_id=client["id"])
        finally:
            await admin.aclose()

    async def cleanup(self, topology: Topology) -> None:
        from tidings.brokers.redis import RedisBroker

        broker = RedisBroker(REDIS_URL, topology)
        await broker.connect()
        try:
            await broker.delete()
        finally:
            await broker.close()


async def _run(*command: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, f"{' '.join(command)} failed: {err.decode()}"
    return out.decode()


_FACTORIES = {
    "memory": MemoryFactory,
    "rabbitmq": RabbitMQFactory,
    "nats": NatsFactory,
    "redis": RedisFactory,
}


def new_factory(name: str) -> BrokerFactory:
    """A factory for broker ``name`` (its server required, unless it is the memory broker)."""
    if name != "memory":
        require(name)
    factory: BrokerFactory = _FACTORIES[name]()
    return factory


@pytest.fixture(params=list(_FACTORIES))
def broker_factory(request: pytest.FixtureRequest) -> BrokerFactory:
    return new_factory(request.param)


# -- shared by the tests that run the relay's publisher (its own event loop, in a thread) ----


@contextmanager
def declared_bus(name: str, topology: Topology) -> Iterator[BrokerFactory]:
    """``topology`` declared on the server ``name`` (a real one, or a memory broker's server
    of its own), deleted afterwards."""
    factory = new_factory(name)

    async def declare() -> None:
        broker = await factory.create(topology)
        try:
            await broker.declare()
        finally:
            await broker.close()

    asyncio.run(declare())
    try:
        yield factory
    finally:
        asyncio.run(factory.cleanup(topology))


@asynccontextmanager
async def declared_nats(topology: Topology, **options: Any) -> AsyncIterator[Any]:
    """A connected ``NatsBroker`` (``options`` passed on) with ``topology`` declared; the bus is
    deleted and the client closed afterwards. For the NATS adapter's own tests."""
    require("nats")
    from tidings.brokers.nats import NatsBroker

    broker = NatsBroker(NATS_URL, topology, **options)
    await broker.connect()
    await broker.declare()
    try:
        yield broker
    finally:
        await broker.delete()
        await broker.close()


@asynccontextmanager
async def pulling(broker: Any, durable: str, batch: int = 8) -> AsyncIterator[Any]:
    """A started puller (``batch`` per fetch) on ``durable`` of the NATS broker's bus, stopped
    afterwards."""
    from tidings.brokers.nats_pull import Puller

    puller = Puller(broker.client, broker.topology.name, durable, batch=batch)
    await puller.start()
    try:
        yield puller
    finally:
        await puller.stop()


def make_broker(factory: BrokerFactory, topology: Topology) -> Any:
    """A new, not yet connected client of ``factory``'s server (for a BlockingBusPublisher)."""
    if isinstance(factory, MemoryFactory):
        return MemoryBroker(topology, factory.server)
    if factory.name == "rabbitmq":
        from tidings.brokers.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(RABBITMQ_URL, topology)
    if factory.name == "nats":
        from tidings.brokers.nats import NatsBroker

        return NatsBroker(NATS_URL, topology)
    from tidings.brokers.redis import RedisBroker

    return RedisBroker(REDIS_URL, topology)


def deliver(relay: Relay) -> None:
    """Run the relay until nothing is left, delayed retries included (waited for in real time)."""
    for _ in range(200):
        relay.run_until_idle()
        wait = relay.next_retry_in()
        if wait is None:
            return
        time.sleep(wait + 0.005)
    raise AssertionError("the relay never settled")


def receive(
    factory: BrokerFactory, topology: Topology, group: str, distinct: int
) -> list[StoredEvent]:
    """Everything ``group`` receives until ``distinct`` different events arrived (and a bit
    longer, so that a duplicate would be among them)."""

    async def consume() -> list[StoredEvent]:
        broker = await factory.create(topology)
        got: list[StoredEvent] = []
        done = asyncio.Event()

        async def handler(delivery: Delivery) -> None:
            got.append(decode_message(delivery.headers, delivery.body))
            if len({m.event_id for m in got}) >= distinct:
                done.set()

        consumer = await broker.consume(group, handler)
        try:
            await asyncio.wait_for(done.wait(), 30)
            await asyncio.sleep(0.3)  # anything extra would arrive now
        finally:
            await consumer.stop()
            await broker.close()
        return got

    return asyncio.run(consume())
