"""Redis consumer reads: the scripted XREADGROUP and the packed reply it returns (a list of
strings, :data:`READ_PIECE` entries each, joined by the consumer).

The decoding is checked without I/O against a packer written here from the script's stated
layout; the script itself runs on the real server, compared with what plain XREADGROUP returns
for the same entries (binary bodies, empty values, an entry trimmed away while pending).
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import BrokerError
from tidings.testing.broker_contract import Bus, Received, eventually, probe
from tidings.testing.services import REDIS_URL, require

redis_module = pytest.importorskip("redis")

from tidings.brokers.port import Delivery, Topology  # noqa: E402
from tidings.brokers.redis import _READ, READ_PIECE, Entry, RedisBroker, _entries, _joined  # noqa: E402

from .conftest import RedisFactory  # noqa: E402


def pack(entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> bytes:
    """The script's layout: id, count of names and values (-1: trimmed), then each string,
    every string after its length (4 bytes, big-endian)."""
    out = bytearray()
    for entry_id, fields in entries:
        out += struct.pack(">I", len(entry_id)) + entry_id
        if fields is None:
            out += struct.pack(">i", -1)
            continue
        out += struct.pack(">i", 2 * len(fields))
        for name, value in fields.items():
            out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return bytes(out)


entry_strategy = st.tuples(
    st.binary(min_size=1, max_size=20),
    st.none() | st.dictionaries(st.binary(max_size=12), st.binary(max_size=300), max_size=4),
)


@given(st.lists(entry_strategy, max_size=8))
def test_packed_entries_decode_to_what_was_packed(
    entries: list[tuple[bytes, dict[bytes, bytes] | None]],
) -> None:
    assert _entries(pack(entries)) == entries


def test_an_empty_reply_is_no_entries() -> None:
    assert _entries(b"") == []
    assert _joined([]) == b""


@pytest.mark.parametrize("reply", [b"packed", None, 3, ["piece", b"piece"], [b"piece", None]])
def test_a_reply_that_is_not_a_list_of_strings_is_a_clear_error(reply: object) -> None:
    with pytest.raises(BrokerError, match="unexpected reply to a stream read"):
        _joined(reply)


@given(st.lists(entry_strategy, min_size=1, max_size=4), st.data())
def test_a_cut_reply_is_a_clear_error(
    entries: list[tuple[bytes, dict[bytes, bytes] | None]], data: st.DataObject
) -> None:
    packed = pack(entries)
    cut = data.draw(st.integers(min_value=1, max_value=len(packed) - 1))
    boundaries = {len(pack(entries[:count])): count for count in range(len(entries) + 1)}
    if cut in boundaries:
        # A cut exactly between entries leaves whole entries: nothing to notice.
        assert _entries(packed[:cut]) == entries[: boundaries[cut]]
    else:
        with pytest.raises(BrokerError, match="unreadable reply to a stream read"):
            _entries(packed[:cut])


# -- on the real server ----------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    require("redis")
    import redis.asyncio as aioredis

    connection = aioredis.Redis.from_url(REDIS_URL)
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture
def stream_key(client: Any) -> str:
    return f"tidings-test-reads-{uuid.uuid4().hex[:10]}"


async def read(
    client: Any, stream_key: str, group: str, count: int, start: str, *acks: bytes
) -> list[Entry]:
    """The script's reply, joined and decoded."""
    return _entries(
        _joined(await client.eval(_READ, 1, stream_key, group, "c", count, start, *acks))
    )


async def test_the_script_reads_what_xreadgroup_reads(client: Any, stream_key: str) -> None:
    try:
        await client.xgroup_create(stream_key, "scripted", id="0", mkstream=True)
        await client.xgroup_create(stream_key, "plain", id="0")
        # More entries than one string of the reply holds, with one piece left part full.
        bodies = [bytes(range(256)), b"", b"\xff\x00" * 5000, "é".encode()] * READ_PIECE
        bodies += [b"last"]
        for body in bodies:
            await client.xadd(stream_key, {b"body": body, b"headers": b"{}", b"": b"x"})
        pieces = await client.eval(_READ, 1, stream_key, "scripted", "c", 100, ">")
        assert len(pieces) == -(-len(bodies) // READ_PIECE)
        scripted = _entries(_joined(pieces))
        reply = await client.xreadgroup("plain", "c", {stream_key: ">"}, count=100)
        streams = reply.items() if isinstance(reply, dict) else reply
        plain = [
            (entry_id, fields)
            for _, stream_entries in streams
            for entry_id, fields in (
                stream_entries[0]
                if stream_entries and isinstance(stream_entries[0], list)
                else stream_entries
            )
        ]
        assert scripted == plain
        assert [fields[b"body"] for _, fields in scripted if fields] == bodies
        # Nothing new: no strings, and our pending entries are still there to read.
        assert await client.eval(_READ, 1, stream_key, "scripted", "c", 100, ">") == []
        pending = await read(client, stream_key, "scripted", 100, "0")
        assert [entry_id for entry_id, _ in pending] == [entry_id for entry_id, _ in plain]
        # Trimmed away while pending: the id comes back without fields.
        await client.xtrim(stream_key, maxlen=0)
        trimmed = await read(client, stream_key, "scripted", 100, "0")
        assert trimmed == [(entry_id, None) for entry_id, _ in plain]
    finally:
        await client.delete(stream_key)


async def test_the_script_acknowledges_the_entries_it_is_given_before_reading(
    client: Any, stream_key: str
) -> None:
    try:
        await client.xgroup_create(stream_key, "g", id="0", mkstream=True)
        first = [await client.xadd(stream_key, {b"body": b"%d" % i}) for i in range(1500)]
        entries = await read(client, stream_key, "g", 1500, ">")
        assert [entry_id for entry_id, _ in entries] == first
        later = await client.xadd(stream_key, {b"body": b"later"})
        # More ids than one XACK of the script takes (1,000): every one is acknowledged.
        again = await read(client, stream_key, "g", 10, ">", *first)
        assert [entry_id for entry_id, _ in again] == [later]
        pending = await client.xpending(stream_key, "g")
        assert pending["pending"] == 1  # only the entry just read
        # Acknowledging again, or with nothing new to read, is harmless.
        assert await client.eval(_READ, 1, stream_key, "g", "c", 10, ">", *first, later) == []
        assert (await client.xpending(stream_key, "g"))["pending"] == 0
    finally:
        await client.delete(stream_key)


async def test_a_consumer_stopped_during_a_batch_acknowledges_it(client: Any) -> None:
    topology = Topology(name=f"acks-{uuid.uuid4().hex[:8]}", groups=("g",), partitions=1)
    broker = RedisBroker(REDIS_URL, topology)
    await broker.connect()
    stopping: list[asyncio.Task[None]] = []
    try:
        await broker.declare()
        batches: list[int] = []

        class StopsDuringTheBatch:
            async def __call__(self, delivery: Delivery) -> None:
                raise AssertionError("five messages published together come as a batch")

            async def handle_batch(self, deliveries: Sequence[Delivery]) -> None:
                # Stopped while this batch is handled: no read follows it to carry its
                # acknowledgement, so the consumer must send it before it lets go.
                stopping.append(asyncio.create_task(consumer.stop()))
                await asyncio.sleep(0.05)
                batches.append(len(deliveries))

        await broker.publish([probe("s", n) for n in range(1, 6)])
        consumer = await broker.consume("g", StopsDuringTheBatch())
        await eventually(lambda: bool(stopping) and stopping[0].done(), "the consumer stopped")
        assert batches == [5]
        pending = await client.xpending(broker.stream_key(0), "g")
        assert pending["pending"] == 0
    finally:
        await broker.delete()
        await broker.close()


async def test_an_entry_trimmed_while_pending_is_acked_and_the_partition_moves_on(
    client: Any,
) -> None:
    topology = Topology(
        name=f"reads-{uuid.uuid4().hex[:8]}",
        groups=("g",),
        partitions=1,
        redelivery_after=1.0,
        max_deliveries=20,
    )
    factory = RedisFactory()
    bus = Bus(factory, topology)
    try:
        publisher = await bus.client()
        consumer_side = await bus.client()
        received = Received()
        first_arrived = asyncio.Event()
        trimmed = asyncio.Event()

        async def handler(delivery: Delivery) -> None:
            if delivery.headers.get("tidings-stream-id") == "gone":
                # Fails until the entry is gone from the stream: only reading it again from
                # the stream (where it is trimmed) can move the partition on.
                first_arrived.set()
                await trimmed.wait()
                raise RuntimeError("fails until its entry is trimmed away")
            received.add(delivery, "c")

        consumer = await consumer_side.consume("g", handler)
        await publisher.publish([probe("gone", 1)])
        await asyncio.wait_for(first_arrived.wait(), timeout=30)
        assert isinstance(publisher, RedisBroker)
        key = publisher.stream_key(0)
        await client.xtrim(key, maxlen=0)
        trimmed.set()
        await publisher.publish([probe("after", 1), probe("after", 2)])
        await eventually(lambda: len(received.items) == 2, "the entries after the trimmed one")
        assert received.by_stream() == {"after": [1, 2]}

        async def nothing_pending() -> bool:
            summary = await client.xpending(key, "g")
            return bool(summary["pending"] == 0)

        for _ in range(100):
            if await nothing_pending():
                break
            await asyncio.sleep(0.05)
        assert await nothing_pending(), "the trimmed entry was never acknowledged"
        await consumer.stop()
    finally:
        await bus.close()
        await factory.cleanup(topology)


@pytest.mark.parametrize("prefetch", [1, 64])
async def test_a_waiting_consumer_takes_one_entry_from_the_blocking_read_and_the_rest_packed(
    client: Any, prefetch: int
) -> None:
    """A consumer that has caught up waits in XREADGROUP BLOCK, whose reply redis-py parses in
    Python: it asks it for one entry, and the script brings the rest of the batch (in order,
    in the same batch, never more than ``prefetch``)."""
    topology = Topology(
        name=f"reads-{uuid.uuid4().hex[:8]}", groups=("g",), partitions=1, prefetch=prefetch
    )
    broker = RedisBroker(REDIS_URL, topology)
    await broker.connect()
    try:
        await broker.declare()
        batches: list[list[int]] = []
        counts: list[int] = []
        xreadgroup = broker.client.xreadgroup

        async def counted_xreadgroup(*args: Any, **kwargs: Any) -> Any:
            counts.append(kwargs["count"])
            return await xreadgroup(*args, **kwargs)

        broker.client.xreadgroup = counted_xreadgroup  # type: ignore[method-assign]

        class Batches:
            async def __call__(self, delivery: Delivery) -> None:
                await self.handle_batch([delivery])

            async def handle_batch(self, deliveries: Sequence[Delivery]) -> None:
                batches.append([int(d.headers["tidings-stream-version"]) for d in deliveries])

        consumer = await broker.consume("g", Batches())
        await eventually(lambda: bool(counts), "the consumer waiting for entries")
        await broker.publish([probe("s", n) for n in range(1, 101)])  # one script: one wake
        await eventually(lambda: sum(map(len, batches)) == 100, "the hundred entries handled")
        await consumer.stop()
        assert set(counts) == {1}
        assert [n for batch in batches for n in batch] == list(range(1, 101))
        assert all(len(batch) <= prefetch for batch in batches)
        if prefetch > 1:
            # Woken by the publish, the consumer took the first 64 entries in one batch.
            assert batches[0] == list(range(1, 65))
        assert (await client.xpending(broker.stream_key(0), "g"))["pending"] == 0
    finally:
        await broker.delete()
        await broker.close()
