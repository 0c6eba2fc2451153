"""NATS JetStream: a delivery the consumer never received must not be overtaken.

JetStream counts a message as delivered when it sends it. If it never reaches the consumer (the
connection dropped, or it went to a pull request that had already given up), the server holds it
as pending until ack_wait runs out, and meanwhile keeps handing out later messages of the same
partition. The consumer notices the jump in the delivery numbers, hands the later messages back,
and waits until the lost one is redelivered, so the stream keeps its order.

The test loses a delivery on purpose: while the consumer is busy, a pull request from another
connection takes the next message and never acknowledges it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest

from tidings.brokers.port import Delivery, Topology
from tidings.brokers.wire import decode_message, normalize_headers
from tidings.testing.broker_contract import eventually, probe
from tidings.testing.services import NATS_URL

from .conftest import declared_nats


def test_deliveries_in_order_counts_up_to_the_first_gap() -> None:
    from tidings.brokers.nats import deliveries_in_order

    assert deliveries_in_order([5, 6, 7], 5) == 3
    assert deliveries_in_order([5, 6, 7], None) == 3
    assert deliveries_in_order([6, 7], 5) == 0  # delivery 5 never arrived
    assert deliveries_in_order([5, 6, 8, 9], 5) == 2  # nor did 7
    assert deliveries_in_order([3, 4], 5) == 0  # numbered anew: not ours to trust
    assert deliveries_in_order([], 5) == 0


@pytest.fixture
async def topology(run_id: str) -> AsyncIterator[Topology]:
    topology = Topology(
        name=f"lost-{run_id}-{uuid.uuid4().hex[:6]}",
        groups=("g",),
        partitions=1,
        redelivery_after=3.0,
        prefetch=16,
    )
    async with declared_nats(topology):
        yield topology


async def test_a_lost_delivery_is_handled_before_the_messages_after_it(
    topology: Topology,
) -> None:
    import nats

    from tidings.brokers.nats import FETCH_WAIT, NatsBroker, durable_name

    consumer_side = NatsBroker(NATS_URL, topology)
    publisher = NatsBroker(NATS_URL, topology)
    thief = await nats.connect(NATS_URL)
    await consumer_side.connect()
    await publisher.connect()
    handled: list[int] = []
    busy = asyncio.Event()
    carry_on = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        n = decode_message(delivery.headers, delivery.body).stream_version
        if n == 2 and not carry_on.is_set():
            busy.set()
            await carry_on.wait()
        handled.append(n)

    try:
        await publisher.publish([probe("s", n) for n in range(3)])
        await consumer_side.consume("g", handler)
        await asyncio.wait_for(busy.wait(), 10)
        # The consumer is inside its handler (for less than ack_wait), so it is not fetching;
        # let any pull request it left on the server expire, so the next message goes where
        # we want it.
        await asyncio.sleep(FETCH_WAIT + 0.2)
        await publisher.publish([probe("s", n) for n in range(3, 10)])
        inbox = thief.new_inbox()
        pocket = await thief.subscribe(inbox)
        await thief.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{topology.name}.{durable_name('g', 0)}",
            json.dumps({"batch": 1, "no_wait": True}).encode(),
            reply=inbox,
        )
        stolen = await pocket.next_msg(timeout=5)
        assert decode_message(normalize_headers(stolen.headers), stolen.data).stream_version == 3
        carry_on.set()  # delivery 3 is now pending at the server, and never arrives here

        await eventually(lambda: len(handled) >= 10, "all ten messages handled", limit=30)
        assert handled == list(range(10))
    finally:
        carry_on.set()
        await thief.close()
        await consumer_side.close()
        await publisher.close()
