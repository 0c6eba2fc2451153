"""The relay's entry point: policy, signature and confirmed publish, from a thread."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from tidings.brokers.port import Delivery, Topology
from tidings.brokers.publisher import BlockingBusPublisher
from tidings.brokers.wire import decode_message
from tidings.errors import BrokerUnavailable, PublishNotAllowed
from tidings.integration.policy import PublishPolicy
from tidings.integration.signing import Keyring, Signer, SigningKey, Verifier
from tidings.testing.broker_contract import eventually, probe
from tidings.testing.services import REDIS_URL, require


@pytest.fixture
def topology() -> Topology:
    require("redis")
    return Topology(name=f"publisher-{uuid.uuid4().hex[:8]}", groups=("g",), partitions=2)


async def test_blocking_publisher_checks_signs_and_confirms(topology: Topology) -> None:
    from tidings.brokers.redis import RedisBroker

    key = SigningKey("k1", os.urandom(32))
    policy = PublishPolicy().allow("contract", topology.name, "tidings.contract.Probe@1")
    publisher = BlockingBusPublisher(
        lambda: RedisBroker(REDIS_URL, topology), policy=policy, signer=Signer(Keyring([key]))
    )
    consumer_side = RedisBroker(REDIS_URL, topology)
    await consumer_side.connect()
    await consumer_side.declare()
    received: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        received.append(delivery)

    await consumer_side.consume("g", handler)
    try:
        await asyncio.to_thread(publisher.start)
        rows = [probe("pub", n) for n in range(5)]
        await asyncio.to_thread(publisher.publish, rows)
        await eventually(lambda: len(received) == 5, "all five published rows arrived")
        verifier = Verifier(Keyring([key]))
        for delivery in received:
            verifier.verify(decode_message(delivery.headers, delivery.body))
        stranger = probe("pub", 9, producer="someone-else")
        with pytest.raises(PublishNotAllowed, match="someone-else"):
            await asyncio.to_thread(publisher.publish, [stranger])
    finally:
        await asyncio.to_thread(publisher.close)
        await consumer_side.delete()
        await consumer_side.close()


def test_publishing_before_start_is_a_clear_error(topology: Topology) -> None:
    from tidings.brokers.redis import RedisBroker

    publisher = BlockingBusPublisher(lambda: RedisBroker(REDIS_URL, topology))
    with pytest.raises(BrokerUnavailable, match="call start"):
        publisher.publish([probe("x", 1)])
