"""The in-memory broker across threads: publishers and consumers in event loops of their own, as
the relay's blocking publisher (a loop in a thread) and a worker are in one process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from tidings.brokers.memory import MemoryBroker, MemoryBrokerServer
from tidings.brokers.port import Delivery, Topology
from tidings.testing.broker_contract import Received, eventually, probe

T = TypeVar("T")


class LoopThread:
    """An event loop running in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` in this thread's loop; the caller's loop goes on meanwhile."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def connected(topology: Topology, server: MemoryBrokerServer) -> MemoryBroker:
    broker = MemoryBroker(topology, server)
    await broker.connect()
    await broker.declare()
    return broker


@pytest.mark.timeout(60)  # a lost wake-up leaves the consumer waiting for ever
async def test_an_idle_consumer_is_woken_by_a_publisher_in_another_threads_loop() -> None:
    # In debug mode a loop refuses callbacks scheduled from another thread without
    # call_soon_threadsafe (they would wait, unnoticed, for its next timer or I/O).
    asyncio.get_running_loop().set_debug(True)
    server = MemoryBrokerServer()
    topology = Topology(name="woken", groups=("g",), partitions=3)
    broker = await connected(topology, server)
    streams = [f"s-{n}" for n in range(6)]
    received = Received()
    all_in = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        received.add(delivery, "consumer")
        if len(received.items) == 10 * len(streams):
            all_in.set()

    consumer = await broker.consume("g", handler)
    await asyncio.sleep(0.05)  # its partitions' tasks now wait on their empty queues
    publishing = LoopThread()
    try:

        async def publish() -> None:
            publisher = await connected(topology, server)
            for version in range(1, 11):
                await publisher.publish([probe(stream, version) for stream in streams])

        # Not awaited here (its completion would wake this loop): nothing else runs in this
        # loop, so only the publisher's wake-ups, set in this loop, bring the messages in.
        published = asyncio.run_coroutine_threadsafe(publish(), publishing.loop)
        await asyncio.wait_for(all_in.wait(), 10)
        published.result(10)
    finally:
        publishing.close()
        await consumer.stop()
    assert all(versions == list(range(1, 11)) for versions in received.by_stream().values())
    assert set(received.by_stream()) == set(streams)


async def test_consumers_of_a_group_in_two_threads_share_its_partitions_and_hand_them_back() -> (
    None
):
    server = MemoryBrokerServer()
    topology = Topology(name="shared", groups=("g",), partitions=4)
    here = await connected(topology, server)
    received = Received()
    first = await here.consume("g", received.handler("first"))
    await eventually(lambda: first.owned == [0, 1, 2, 3], "the only consumer serves all four")
    other = LoopThread()
    there = MemoryBroker(topology, server)
    try:

        async def join() -> Any:
            await there.connect()
            return await there.consume("g", received.handler("second"))

        second = await other.run(join())
        await eventually(
            lambda: (
                len(first.owned) == 2
                and len(second.owned) == 2
                and not set(first.owned) & set(second.owned)
            ),
            "two partitions each",
        )
        streams = [f"s-{n}" for n in range(8)]
        for version in range(1, 6):
            await here.publish([probe(stream, version) for stream in streams])
        await eventually(lambda: len(received.items) == 40, "every message handled")
        assert {consumer for *_, consumer in received.items} == {"first", "second"}
        assert all(versions == [1, 2, 3, 4, 5] for versions in received.by_stream().values())

        await other.run(there.close())  # it leaves: the first takes its partitions back
        await eventually(lambda: first.owned == [0, 1, 2, 3], "all four back with the first")
        await here.publish([probe(stream, 6) for stream in streams])
        await eventually(lambda: len(received.items) == 48, "the next round handled")
        assert all(versions[-1] == 6 for versions in received.by_stream().values())
        assert len(received.keys()) == 48  # each once
    finally:
        other.close()
        await here.close()


def test_a_consumer_whose_loop_ended_without_stopping_leaves_its_partitions_to_the_next() -> None:
    server = MemoryBrokerServer()
    topology = Topology(name="forgotten", groups=("g",), partitions=2)

    async def forget() -> None:
        broker = await connected(topology, server)
        await broker.consume("g", Received().handler("forgotten"))
        # Returns with it running: asyncio.run cancels its tasks and closes its loop.

    asyncio.run(forget())
    received = Received()

    async def take_over() -> None:
        broker = await connected(topology, server)
        consumer = await broker.consume("g", received.handler("next"))
        await eventually(lambda: consumer.owned == [0, 1], "both partitions taken over")
        await broker.publish([probe(f"s-{n}", 1) for n in range(6)])
        await eventually(lambda: len(received.items) == 6, "every message handled")
        await broker.close()

    asyncio.run(take_over())
