"""``tidings bus dead-letters``: a group's dead letters read from the real broker, left there."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest

from tidings.brokers.port import Broker, Delivery, Topology
from tidings.errors import MessageRejected
from tidings.testing.broker_contract import probe
from tidings.testing.services import NATS_URL, RABBITMQ_URL, REDIS_URL, require

from .conftest import declared_bus, make_broker
from .test_cli import invoke

URLS = {"rabbitmq": RABBITMQ_URL, "nats": NATS_URL, "redis": REDIS_URL}


async def dead_letters_of(broker: Broker, count: int) -> list[Delivery]:
    """Group ``g``'s dead letters, once there are ``count`` of them (or after 30 s)."""
    found: list[Delivery] = []
    for _ in range(600):
        found = await broker.dead_letters("g")
        if len(found) >= count:
            break
        await asyncio.sleep(0.05)
    return found


@pytest.mark.parametrize("kind", ["rabbitmq", "nats", "redis"])
def test_dead_letters_are_listed_with_their_reasons_and_stay(kind: str, run_id: str) -> None:
    topology = Topology(name=f"dlq-cli-{run_id}-{kind}", groups=("g",), partitions=2)
    hostile = os.urandom(64)
    with declared_bus(kind, topology) as factory:

        async def dead_letter_two() -> None:
            consumer_side = await factory.create(topology)
            publisher = make_broker(factory, topology)
            await publisher.connect()

            async def refuse(delivery: Delivery) -> None:
                raise MessageRejected("signature does not match (key k-1)")

            consumer = await consumer_side.consume("g", refuse)
            await publisher.publish([probe("parcel-1", 1)])
            await publisher.publish_raw(0, {}, hostile)
            found = await dead_letters_of(consumer_side, 2)
            await consumer.stop()
            await consumer_side.close()
            await publisher.close()
            assert len(found) == 2, "both refused into the dead letters"

        asyncio.run(dead_letter_two())
        arguments = ["--broker", URLS[kind], "--bus", topology.name, "--group", "g"]
        code, output = invoke("bus", "dead-letters", *arguments, "--json")
        assert code == 0, output
        report = json.loads(output)
        assert report["count"] == 2
        by_type = {letter["event_type"]: letter for letter in report["dead_letters"]}
        assert set(by_type) == {"tidings.contract.Probe", None}
        for letter in report["dead_letters"]:
            assert letter["reason"] == "signature does not match (key k-1)"
            assert letter["dead_lettered_at"]
        assert base64.b64decode(by_type[None]["body_base64"]) == hostile  # the original bytes
        assert by_type["tidings.contract.Probe"]["stream_id"] == "parcel-1"

        # Listing takes nothing away; the human form says why each was refused.
        code, output = invoke("bus", "dead-letters", *arguments, "--limit", "1")
        assert code == 0, output
        assert output.count("signature does not match (key k-1)") == 1
        code, output = invoke("bus", "dead-letters", *arguments, "--json")
        assert json.loads(output)["count"] == 2


def test_a_broker_url_of_no_known_kind_is_refused() -> None:
    code, output = invoke(
        "bus", "dead-letters", "--broker", "kafka://u:pw@k:9092", "--bus", "b", "--group", "g"
    )
    assert code != 0
    assert "scheme 'kafka'" in output and "pw" not in output


def test_a_redis_bus_under_another_key_prefix_is_read_there(run_id: str) -> None:
    require("redis")
    from tidings.brokers.redis import RedisBroker

    topology = Topology(name=f"dlq-prefix-{run_id}", groups=("g",), partitions=1)
    prefix = f"shop{run_id}"

    async def dead_letter_one() -> None:
        broker = RedisBroker(REDIS_URL, topology, key_prefix=prefix)
        await broker.connect()
        await broker.declare()

        async def refuse(delivery: Delivery) -> None:
            raise MessageRejected("not ours")

        consumer = await broker.consume("g", refuse)
        await broker.publish([probe("s-1", 1)])
        assert len(await dead_letters_of(broker, 1)) == 1
        await consumer.stop()
        await broker.close()

    async def delete() -> None:
        broker = RedisBroker(REDIS_URL, topology, key_prefix=prefix)
        await broker.connect()
        await broker.delete()
        await broker.close()

    asyncio.run(dead_letter_one())
    try:
        arguments = ["--broker", REDIS_URL, "--bus", topology.name, "--group", "g", "--json"]
        code, output = invoke("bus", "dead-letters", *arguments, "--redis-key-prefix", prefix)
        assert code == 0, output
        assert json.loads(output)["count"] == 1
        code, output = invoke("bus", "dead-letters", *arguments)  # the default prefix: not there
        assert json.loads(output)["count"] == 0
    finally:
        asyncio.run(delete())


def test_a_redis_key_prefix_is_for_redis_only(run_id: str) -> None:
    arguments = ["--bus", f"dlq-cli-{run_id}-none", "--group", "g", "--redis-key-prefix", "shop"]
    code, output = invoke("bus", "dead-letters", "--broker", RABBITMQ_URL, *arguments)
    assert code != 0 and "for a redis:// broker only" in output
    code, output = invoke("bus", "dead-letters", "--broker", REDIS_URL, *arguments, "--json")
    assert code == 0, output  # another prefix, nothing there: an empty list, not an error
    assert json.loads(output)["count"] == 0
