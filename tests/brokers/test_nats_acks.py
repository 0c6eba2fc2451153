"""NATS JetStream: a batch's acknowledgements sent as one block (``Client.acknowledge``).

On the real server: what ``acknowledge`` sends settles every message of the batch as
``Msg.ack()`` would, and everything ``ack()`` and ``publish()`` refuse is refused before anything
is sent or marked.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("nats")

import nats.errors
from nats.aio.msg import Msg

from tidings.brokers.port import Topology
from tidings.testing.broker_contract import probe

from .conftest import declared_nats, pulling


@pytest.fixture
async def broker(run_id: str) -> AsyncIterator[Any]:
    topology = Topology(
        name=f"acks-{run_id}-{uuid.uuid4().hex[:6]}",
        groups=("g",),
        partitions=1,
        prefetch=8,
        redelivery_after=30.0,
    )
    async with declared_nats(topology) as broker:
        yield broker


@contextlib.asynccontextmanager
async def fetched(broker: Any, count: int) -> AsyncIterator[list[Any]]:
    """``count`` published messages, fetched (not yet settled) from group g's consumer."""
    from tidings.brokers.nats import durable_name

    await broker.publish([probe("s", n) for n in range(1, count + 1)])
    async with pulling(broker, durable_name("g", 0), batch=count) as puller:
        messages = await puller.fetch(5.0)
        assert len(messages) == count
        yield messages


async def pending(broker: Any) -> tuple[int, int]:
    """Group g's consumer: (delivered and unacknowledged, not yet delivered)."""
    from tidings.brokers.nats import durable_name

    await broker.client.flush()
    info = await broker.js.consumer_info(broker.topology.name, durable_name("g", 0))
    return int(info.num_ack_pending), int(info.num_pending)


async def pending_after_acks(broker: Any, expected: tuple[int, int]) -> tuple[int, int]:
    """:func:`pending` once it shows ``expected`` (or after 10 s): JetStream applies acks to
    the consumer asynchronously, so an info request sent right after them may not show them
    yet, though they went out first on the same connection."""
    deadline = asyncio.get_running_loop().time() + 10.0
    while (found := await pending(broker)) != expected:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.02)
    return found


async def test_acknowledges_a_whole_batch_in_one_write(broker: Any) -> None:
    async with fetched(broker, 5) as messages:
        assert await pending(broker) == (5, 0)
        sent: list[bytes] = []
        client = broker.client
        send = client._send_command

        async def spy(command: bytes, priority: bool = False) -> None:
            sent.append(command)
            await send(command, priority)

        client._send_command = spy
        out_before = client.stats["out_msgs"]
        try:
            await client.acknowledge(messages)
        finally:
            del client._send_command
        assert len(sent) == 1
        assert sent[0] == b"".join(f"PUB {m.reply}  0\r\n\r\n".encode() for m in messages)
        assert client.stats["out_msgs"] - out_before == 5
        assert all(m._ackd for m in messages)
        assert await pending_after_acks(broker, (0, 0)) == (0, 0)


async def test_refuses_what_ack_refuses_and_marks_nothing(broker: Any) -> None:
    async with fetched(broker, 3) as messages:
        await messages[1].ack()
        out_before = broker.client.stats["out_msgs"]
        with pytest.raises(nats.errors.MsgAlreadyAckdError):
            await broker.client.acknowledge(messages)
        not_from_jetstream = Msg(broker.client, subject="x", reply="", data=b"")
        with pytest.raises(nats.errors.NotJSMessageError):
            await broker.client.acknowledge([messages[0], not_from_jetstream])
        hostile = Msg(broker.client, subject="x", reply="$JS.ACK.x\r\nPUB y 0", data=b"")
        with pytest.raises(nats.errors.BadSubjectError):
            await broker.client.acknowledge([hostile])
        assert broker.client.stats["out_msgs"] == out_before  # nothing was sent
        assert not messages[0]._ackd and not messages[2]._ackd
        assert await pending_after_acks(broker, (2, 0)) == (2, 0)  # messages[1]'s own ack
        await broker.client.acknowledge([messages[0], messages[2]])
        assert await pending_after_acks(broker, (0, 0)) == (0, 0)
        await broker.client.acknowledge([])  # nothing to do


async def test_a_closed_connection_is_refused(broker: Any) -> None:
    from tidings.brokers.nats_client import Client
    from tidings.testing.services import NATS_URL

    async with fetched(broker, 1) as messages:
        closed = Client()
        await closed.connect(NATS_URL)
        await closed.close()
        with pytest.raises(nats.errors.ConnectionClosedError):
            await closed.acknowledge(messages)
        assert not messages[0]._ackd
        assert await pending(broker) == (1, 0)
