"""NATS JetStream: the adapter's own pull requests (:mod:`tidings.brokers.nats_pull`).

A fetch returns what the consumer has now, up to the batch size, without waiting for the batch to
fill; on an idle consumer it returns the first message as soon as it comes; it never raises for
a consumer that does not answer; and nothing a server sends late is dropped.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tidings.brokers.port import Topology
from tidings.testing.broker_contract import eventually, probe

from .conftest import declared_nats, pulling


@dataclass
class FakeMessage:
    reply: str = ""
    headers: dict[str, str] | None = None
    data: bytes = b""


async def test_a_status_ends_the_request_and_a_delivery_with_a_status_header_does_not() -> None:
    from tidings.brokers.nats_pull import Puller

    puller = Puller(client=None, stream="s", durable="d", batch=3)
    ended = asyncio.get_running_loop().create_future()
    puller._expecting, puller._ended = 3, ended
    # A published message may carry any header; only the reply subject marks a delivery.
    puller._arrived(FakeMessage(reply="$JS.ACK.s.d.1.1.1.0.0", headers={"Status": "404"}))
    puller._arrived(FakeMessage(headers={"Status": "100"}))  # a heartbeat
    assert not ended.done()
    puller._arrived(FakeMessage(headers={"Status": "408"}))
    assert ended.done()
    assert len(puller._received) == 1
    assert puller._refused is None


class RefusingClient:
    """Answers every pull request with JetStream's status for a deleted consumer."""

    def __init__(self) -> None:
        self.puller: Any = None
        self.requests = 0

    async def publish(self, subject: str, body: bytes, reply: str = "") -> None:
        self.requests += 1
        refusal = FakeMessage(headers={"Status": "409", "Description": "Consumer Deleted"})
        asyncio.get_running_loop().call_soon(lambda: self.puller._arrived(refusal))


async def test_a_refusal_ends_the_request_and_fails_the_fetch() -> None:
    from tidings.brokers.nats_pull import Puller
    from tidings.errors import BrokerError

    client = RefusingClient()
    puller = client.puller = Puller(client=client, stream="s", durable="d", batch=3)
    started = time.monotonic()
    # Not an empty fetch (which the caller would repeat at once): an error it logs and waits on.
    with pytest.raises(BrokerError, match="409 Consumer Deleted"):
        await puller.fetch(5.0)
    assert time.monotonic() - started < 2.0  # each request ended at the refusal
    assert client.requests == 2  # the no_wait request, then the lingering one
    assert puller._refused is None  # reported once


async def test_a_late_delivery_waits_for_the_next_fetch() -> None:
    from tidings.brokers.nats_pull import Puller

    puller = Puller(client=None, stream="s", durable="d", batch=3)
    late = FakeMessage(reply="$JS.ACK.s.d.1.1.1.0.0")
    puller._arrived(late)  # no request in flight: an answer to one that gave up
    assert await puller.fetch(0.1) == [late]  # returned at once, no request sent


@pytest.fixture
async def broker(run_id: str) -> AsyncIterator[Any]:
    topology = Topology(
        name=f"pull-{run_id}-{uuid.uuid4().hex[:6]}", groups=("g",), partitions=1, prefetch=8
    )
    async with declared_nats(topology) as broker:
        yield broker


async def test_fetches_what_is_there_up_to_the_batch_without_waiting(
    broker: Any,
) -> None:
    from tidings.brokers.nats import durable_name

    await broker.publish([probe("s", n) for n in range(1, 12)])
    async with pulling(broker, durable_name("g", 0)) as puller:
        started = time.monotonic()
        first = await puller.fetch(5.0)
        assert time.monotonic() - started < 2.0  # did not wait out the 5 s
        assert [m.metadata.sequence.stream for m in first] == list(range(1, 9))
        for message in first:
            await message.ack()
        second = await puller.fetch(5.0)
        assert [m.metadata.sequence.stream for m in second] == [9, 10, 11]
        assert all(m.headers["tidings-stream-id"] == "s" for m in second)


async def test_an_idle_fetch_returns_the_first_message_when_it_comes(
    broker: Any,
) -> None:
    from tidings.brokers.nats import durable_name

    async with pulling(broker, durable_name("g", 0)) as puller:
        assert await puller.fetch(0.3) == []  # nothing there: empty after the wait

        async def publish_soon() -> None:
            await asyncio.sleep(0.2)
            await broker.publish([probe("s", 1)])

        publishing = asyncio.create_task(publish_soon())
        started = time.monotonic()
        fetched = await puller.fetch(5.0)
        assert time.monotonic() - started < 2.0  # not the whole wait, nor a full batch
        await publishing
        assert [m.metadata.sequence.stream for m in fetched] == [1]


async def test_a_consumer_that_does_not_exist_gives_nothing_and_no_error(
    broker: Any,
) -> None:
    async with pulling(broker, "no-such-consumer") as puller:
        assert await puller.fetch(0.2) == []


async def test_a_direct_subscription_hands_each_message_to_its_function_in_order() -> None:
    """``Client.subscribe_direct``: messages reach the function as the client reads them, in
    order, headers read; what it raises goes to the error callback and the next message still
    comes; after ``unsubscribe()`` nothing does."""
    from tidings.brokers.nats_client import Client, header_block
    from tidings.testing.services import NATS_URL, require

    require("nats")
    client = Client()
    errors: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        errors.append(exc)

    await client.connect(NATS_URL, error_cb=error_cb)
    try:
        subject = f"direct.{uuid.uuid4().hex}"
        seen: list[tuple[bytes, str | None]] = []
        tasks: set[asyncio.Task[Any] | None] = set()

        def on_message(message: Any) -> None:
            tasks.add(asyncio.current_task())
            seen.append((message.data, (message.headers or {}).get("n")))
            if message.data == b"raise":
                raise ValueError("the function failed")

        subscription = await client.subscribe_direct(subject, on_message)
        for n in range(50):
            await client.publish(subject, b"%d" % n, headers=header_block({"n": str(n)}))
        await client.publish(subject, b"raise")
        await client.publish(subject, b"after")
        await client.flush()
        await eventually(lambda: len(seen) == 52, "the 52 messages")
        assert seen[:50] == [(b"%d" % n, str(n)) for n in range(50)]
        assert seen[50:] == [(b"raise", None), (b"after", None)]
        assert [str(e) for e in errors] == ["the function failed"]
        # Called from the task that reads the connection, not through a subscription's queue.
        assert tasks == {client._reading_task}
        await subscription.unsubscribe()
        assert subscription._id not in client._direct
        await client.publish(subject, b"too late")
        await client.flush()
        await asyncio.sleep(0.1)
        assert len(seen) == 52
    finally:
        await client.close()
