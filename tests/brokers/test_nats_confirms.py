"""NATS JetStream: a batch is confirmed only when every message's acknowledgement came back.

The adapter reads JetStream's replies itself (:mod:`tidings.brokers.nats_confirms`) instead of
through nats-py's ``publish_async``; these tests check that a refusal of any one message fails
the whole ``publish()`` and that confirmed messages really are in the stream.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tidings.brokers.port import Topology
from tidings.errors import PublishNotConfirmed
from tidings.testing.broker_contract import probe

from .conftest import declared_nats


def test_an_acknowledgement_is_not_a_refusal() -> None:
    from tidings.brokers.nats_confirms import refusal_of

    assert refusal_of(b'{"stream":"orders","seq":12}', None) is None
    assert refusal_of(b'{"stream":"orders","seq":12,"duplicate":true}', None) is None


def test_refusals_say_why() -> None:
    from tidings.brokers.nats_confirms import refusal_of

    error = b'{"error":{"code":400,"err_code":10060,"description":"wrong stream"}}'
    assert refusal_of(error, None) == "JetStream error 400: wrong stream"
    assert refusal_of(b"", {"Status": "503"}) == "no JetStream stream took the message"
    assert "status 408" in (refusal_of(b"", {"Status": "408"}) or "")
    assert "unreadable" in (refusal_of(b"{not json", None) or "")
    assert "something else" in (refusal_of(b'{"seq":1}', None) or "")


@pytest.fixture
async def broker(run_id: str) -> AsyncIterator[Any]:
    topology = Topology(name=f"acks-{run_id}-{uuid.uuid4().hex[:6]}", groups=("g",), partitions=2)
    async with declared_nats(topology, confirm_timeout=5.0) as broker:
        yield broker


async def test_every_confirmed_message_is_in_the_stream(broker: Any) -> None:
    await broker.publish([probe(f"s{n % 5}", n) for n in range(300)])
    await broker.publish([probe("s9", 1)])
    info = await broker.js.stream_info(broker.topology.name)
    assert info.state.messages == 301


async def test_a_refused_message_fails_the_batch(broker: Any) -> None:
    from tidings.brokers import nats as nats_adapter

    # A subject outside the stream's: nobody stores it, JetStream answers "no responders".
    broker._subjects[1] = f"{broker.topology.name}-elsewhere.p.1"
    messages = [probe(f"s{n}", 1) for n in range(20)]
    assert {nats_adapter.partition_of(m.stream_id, 2) for m in messages} == {0, 1}
    with pytest.raises(PublishNotConfirmed, match="no JetStream stream"):
        await broker.publish(messages)
