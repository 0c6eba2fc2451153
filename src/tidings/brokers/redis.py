"""Redis Streams adapter (redis-py asyncio): consumer groups, XACK after the handler, XAUTOCLAIM.

Keys for a bus ``B`` (under ``key_prefix``, default ``tidings``):

* ``tidings:B:p<i>``: one stream per partition (publishers pick it with
  ``partition_of(stream_id)``); each group is a consumer group on every partition stream,
  created with ``XGROUP CREATE ... MKSTREAM`` (an existing group is left alone);
* ``tidings:B:<G>:lease:p<i>``: which consumer of group ``G`` owns partition ``i``, and
  ``tidings:B:<G>:members``: the live consumers of ``G`` (a sorted set of names scored by when
  each one's heartbeat runs out, by the server's clock). Every ``rebalance_interval`` (a third of
  ``redelivery_after``) a consumer beats (one script: note itself, drop the expired, list the
  rest), renews its leases, and computes its :func:`~tidings.brokers.port.fair_share` from the
  number of members and its rank among them. Below its share it takes free partitions with
  ``SET NX PX``; above it, it stops reading the extra ones after the entries in hand and then
  deletes their leases, so that another member takes them. A partition is read only by its
  owner, one batch after another, which keeps per-stream order with competing consumers. When
  an owner dies its heartbeat and leases run out and the others take its partitions over; a
  next owner first takes over its predecessor's unacknowledged entries with ``XAUTOCLAIM`` and
  handles them before anything new;
* ``tidings:B:<G>:dead``: the group's dead letters.

An entry has two fields: ``body`` (the payload, as is) and ``headers`` (every header in one JSON
object; entries written by earlier versions, with one ``h:<name>`` field per header, are still
read).

A partition's owner reads up to ``prefetch`` entries at a time with one scripted
``XREADGROUP`` that returns them packed in a few strings (redis-py parses every element of a reply
in Python: the nested reply cost about 20 microseconds per entry, the packed one a few); when
there is nothing new it waits with a plain blocking ``XREADGROUP`` (a script cannot block).
A message is ``XACK``-ed only after its handler returns (consecutive entries read together go to
a batch-capable handler, the inbox, at once: one commit, then one ``XACK`` for them all, sent
inside the partition's next read script, or on its own before a claim and when the partition
stops or changes hands). If the handler fails, the entry stays pending and the owner reads its
own pending entries again (``XREADGROUP ... 0``) before new ones, so the retry happens in order.
Publishing appends a batch's messages with one scripted command per partition (``EVAL``: an
``XADD`` per message, in order, up to :data:`APPEND_CHUNK` per command), all sent in one round
trip; the count of entries each script appended is the confirmation (durability then depends
on the server's AOF/RDB setup).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec

from tidings.brokers.port import (
    Delivery,
    GroupCommit,
    Handler,
    Outcome,
    Settlement,
    Topology,
    fair_share,
    partition_key,
    partition_of,
    rebalance_interval,
    retry_pause,
    run_handler,
)
from tidings.brokers.wire import encode_headers, normalize_headers
from tidings.core.messages import StoredEvent
from tidings.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    PublishNotConfirmed,
    TopologyError,
)

try:
    import redis.asyncio as aioredis
    import redis.exceptions
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "the Redis adapter needs redis-py: pip install 'tidings[redis]'"
    ) from missing

log = logging.getLogger("tidings.brokers.redis")

#: How long one XREADGROUP waits for new entries (ms) before looking at leases and stops again.
READ_BLOCK_MS = 1000
_BODY = b"body"
#: All headers of an entry, as one JSON object (one field to parse instead of one per header).
_HEADERS = b"headers"
#: Earlier entries carry each header in a field of its own, ``h:<name>``; still read.
_HEADER = b"h:"
_encode_headers = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder(dict[str, str]).decode


def _fields(headers: Mapping[str, str], body: bytes) -> dict[Any, Any]:
    return {_BODY: body, _HEADERS: _encode_headers(headers)}


# Append several messages to one partition's stream in one command: ARGV holds body, headers,
# body, headers, ... (the fields of _fields, in its order); returns how many were appended.
# One small reply for the lot instead of one XADD reply per message: redis-py parses each
# element of a reply in Python, which cost publishing more than the messages themselves (a list
# of the new entry ids, returned before, cost the relay about 4 microseconds per message). A
# failing XADD raises, so the script returns only once every entry was appended, in order.
_APPEND = f"""
local appended = 0
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', '{_BODY.decode()}', ARGV[i], '{_HEADERS.decode()}', ARGV[i + 1])
  appended = appended + 1
end
return appended
"""
#: Messages per append command at most: a script holds the server while it runs.
APPEND_CHUNK = 256

#: Entries per string of a :data:`_READ` reply.
READ_PIECE = 8

# Acknowledge the entries in ARGV[5], ARGV[6], ... (the batch its caller just committed: one
# command fewer per batch, each costing redis-py about as much CPU as a few messages), then read
# a partition's entries for a consumer (XREADGROUP without BLOCK: a script cannot wait) and
# return them packed: each entry as its id, the number of its field names and values (-1 for an
# entry trimmed away while pending), then those names and values, every string preceded by its
# length as 4 bytes, big-endian. redis-py parses each element of a reply in Python, about 20
# microseconds per entry of XREADGROUP's nested reply (see _entries). The reply is a short list
# of strings, READ_PIECE entries each, that the caller joins: one string for a whole read of 256
# entries (about 180 KB) cost the server 6.5-6.75 microseconds per entry, pieces of 8 entries
# 4.5-5 (Redis 7.0 here; Lua builds a long concatenation through ever longer intermediate
# strings), for about 0.1 microsecond more per entry in redis-py (each string is one element of
# the reply to parse; pieces of 2 entries cost it 0.4 more and saved the server no more).
# Within a piece, one table joined once: Lua interns every string it makes, so a concatenation
# per field cost the server about a tenth more.
_READ = f"""
for i = 5, #ARGV, 1000 do
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], ARGV[4])
if not reply then
  return {{}}
end
local pack, concat, pieces, out, n = struct.pack, table.concat, {{}}, {{}}, 0
for e, entry in ipairs(reply[1][2]) do
  if (e - 1) % {READ_PIECE} == 0 and n > 0 then
    pieces[#pieces + 1] = concat(out, '', 1, n)
    n = 0
  end
  local id, fields = entry[1], entry[2]
  out[n + 1] = pack('>I4', #id)
  out[n + 2] = id
  if fields then
    out[n + 3] = pack('>i4', #fields)
    n = n + 3
    for i = 1, #fields do
      local value = fields[i]
      out[n + 1] = pack('>I4', #value)
      out[n + 2] = value
      n = n + 2
    end
  else
    out[n + 3] = pack('>i4', -1)
    n = n + 3
  end
end
pieces[#pieces + 1] = concat(out, '', 1, n)
return pieces
"""
_LENGTH = struct.Struct(">I").unpack_from
_COUNT = struct.Struct(">i").unpack_from

#: A stream entry as read: its id and fields (None: trimmed away while it was pending).
Entry = tuple[bytes, dict[bytes, bytes] | None]


def _joined(pieces: object) -> bytes:
    """The packed entries of a :data:`_READ` reply (a list of strings), as one string."""
    if isinstance(pieces, list):
        try:
            return b"".join(pieces)
        except TypeError:
            pass  # an element that is not a string
    raise BrokerError(f"unexpected reply to a stream read: {pieces!r:.80}")


def _entries(packed: bytes) -> list[Entry]:
    """The entries of a :data:`_READ` reply, in stream order."""
    entries: list[Entry] = []
    position, end = 0, len(packed)
    try:
        while position < end:
            (size,) = _LENGTH(packed, position)
            entry_id = packed[position + 4 : position + 4 + size]
            position += 4 + size
            (count,) = _COUNT(packed, position)
            position += 4
            if count < 0:
                entries.append((entry_id, None))
                continue
            fields: dict[bytes, bytes] = {}
            for _ in range(count // 2):
                (size,) = _LENGTH(packed, position)
                name = packed[position + 4 : position + 4 + size]
                position += 4 + size
                (size,) = _LENGTH(packed, position)
                fields[name] = packed[position + 4 : position + 4 + size]
                position += 4 + size
            entries.append((entry_id, fields))
    except struct.error as exc:
        raise BrokerError(f"unreadable reply to a stream read: {exc}") from exc
    if position != end:
        raise BrokerError("unreadable reply to a stream read: it ends inside an entry")
    return entries


# Renew a lease only if we still hold it; returns 1 when renewed.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# A member's heartbeat: note it alive until now + ttl (by the server's clock, the same for
# every member), forget the members whose time is up, and return the live ones.
_HEARTBEAT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
# Give a lease up only if we hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _translate(error: BaseException, doing: str) -> BrokerError:
    """The one place where redis-py errors become tidings errors."""
    if isinstance(error, BrokerError):
        return error
    if isinstance(
        error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError
    ):
        return BrokerUnavailable(f"Redis connection problem while {doing}: {error!r}")
    if isinstance(error, redis.exceptions.ResponseError):
        return TopologyError(f"Redis refused a command while {doing}: {error}")
    return BrokerError(f"Redis error while {doing}: {error!r}")


@contextlib.contextmanager
def _driver_errors(doing: str) -> Iterator[None]:
    try:
        yield
    except asyncio.CancelledError:
        raise
    except BrokerError:
        raise
    except Exception as exc:
        raise _translate(exc, doing) from exc


class RedisBroker:
    """The broker port on Redis Streams (see the module docstring for the keys)."""

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        key_prefix: str = "tidings",
        connection_name: str | None = None,
    ) -> None:
        self.url = url
        self.topology = topology
        self.key_prefix = key_prefix
        self.connection_name = connection_name or f"tidings-{topology.name}"
        # Any: redis-py's overloaded stubs type stream replies loosely; _read checks shapes.
        self._client: Any = None
        self._consumers: list[_RedisConsumer] = []

    # -- keys --------------------------------------------------------------------------------

    def stream_key(self, partition: int) -> str:
        return f"{self.key_prefix}:{self.topology.name}:p{partition}"

    def dead_letter_key(self, group: str) -> str:
        return f"{self.key_prefix}:{self.topology.name}:{group}:dead"

    def lease_key(self, group: str, partition: int) -> str:
        return f"{self.key_prefix}:{self.topology.name}:{group}:lease:p{partition}"

    def members_key(self, group: str) -> str:
        return f"{self.key_prefix}:{self.topology.name}:{group}:members"

    # -- connection ----------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._client is not None:
            return
        with _driver_errors(f"connecting to {self.url}"):
            client = aioredis.Redis.from_url(
                self.url,
                client_name=self.connection_name,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=5),
                retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
                health_check_interval=10,
            )
            await client.ping()
            self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            raise BrokerUnavailable(f"Redis broker for bus {self.topology.name!r}: not connected")
        return self._client

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.stop()
        self._consumers.clear()
        await self._drop_client()

    async def abort(self) -> None:
        """Close the connection without acknowledging or releasing anything (a crash)."""
        for consumer in self._consumers:
            consumer.abandon()
        self._consumers.clear()
        await self._drop_client()

    async def _drop_client(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.aclose()

    # -- topology ------------------------------------------------------------------------------

    async def declare(self) -> None:
        with _driver_errors(f"declaring bus {self.topology.name!r}"):
            for group in self.topology.groups:
                for partition in range(self.topology.partitions):
                    try:
                        await self.client.xgroup_create(
                            self.stream_key(partition), group, id="0", mkstream=True
                        )
                    except redis.exceptions.ResponseError as exc:
                        if "BUSYGROUP" not in str(exc):
                            raise

    async def delete(self) -> None:
        """Delete every key of the bus (test cleanup, decommissioning)."""
        with _driver_errors(f"deleting bus {self.topology.name!r}"):
            pattern = f"{self.key_prefix}:{self.topology.name}:*"
            keys = [key async for key in self.client.scan_iter(match=pattern, count=500)]
            if keys:
                await self.client.delete(*keys)

    # -- publishing ----------------------------------------------------------------------------

    async def publish(self, messages: Sequence[StoredEvent]) -> None:
        if not messages:
            return
        topology = self.topology
        for message in messages:
            if len(message.payload) > topology.max_message_bytes:
                raise PublishNotConfirmed(
                    f"{message.describe()}: payload of {len(message.payload)} bytes exceeds the "
                    f"bus limit of {topology.max_message_bytes}"
                )
        # Grouped by partition, in publishing order within each: one append command per
        # partition (and per APPEND_CHUNK messages), all in one round trip.
        arguments: dict[int, list[bytes]] = {}
        for message in messages:
            partition = partition_of(partition_key(message), topology.partitions)
            fields = arguments.get(partition)
            if fields is None:
                fields = arguments[partition] = []
            fields.append(message.payload)
            fields.append(_encode_headers(encode_headers(message)))
        expected: list[int] = []
        with _driver_errors(f"publishing {len(messages)} message(s) to {topology.name!r}"):
            pipeline = self.client.pipeline(transaction=False)
            for partition, fields in arguments.items():
                key = self.stream_key(partition)
                for start in range(0, len(fields), 2 * APPEND_CHUNK):
                    chunk = fields[start : start + 2 * APPEND_CHUNK]
                    pipeline.eval(_APPEND, 1, key, *chunk)
                    expected.append(len(chunk) // 2)
            results = await pipeline.execute(raise_on_error=False)
        for result, count in zip(results, expected, strict=True):
            if isinstance(result, Exception):
                raise _translate(result, f"publishing to {topology.name!r}") from result
            if result != count:
                raise PublishNotConfirmed(
                    f"Redis confirmed {result if isinstance(result, int) else 0} of "
                    f"{count} message(s) publishing to {topology.name!r}"
                )

    async def publish_raw(self, partition: int, headers: Mapping[str, str], body: bytes) -> None:
        fields = _fields(headers, body)
        key = self.stream_key(partition % self.topology.partitions)
        with _driver_errors(f"publishing a raw message to {key}"):
            await self.client.xadd(key, fields)

    # -- consuming -----------------------------------------------------------------------------

    async def consume(self, group: str, handler: Handler) -> _RedisConsumer:
        self.topology.require_group(group)
        consumer = _RedisConsumer(self, group, handler)
        consumer.start()
        self._consumers.append(consumer)
        return consumer

    async def dead_letter(self, settlement: Settlement, delivery: Delivery, group: str) -> None:
        fields = _fields(settlement.dead_letter_headers, delivery.body)
        with _driver_errors(f"dead-lettering to {self.dead_letter_key(group)}"):
            await self.client.xadd(self.dead_letter_key(group), fields)

    async def dead_letters(self, group: str, limit: int = 100) -> list[Delivery]:
        self.topology.require_group(group)
        with _driver_errors(f"reading dead letters of group {group!r}"):
            entries = await self.client.xrange(self.dead_letter_key(group), count=limit)
        return [_delivery(entry_id, fields, -1, 1) for entry_id, fields in entries]


def _delivery(
    entry_id: bytes, fields: dict[bytes, bytes], partition: int, attempt: int
) -> Delivery:
    packed = fields.get(_HEADERS)
    headers: dict[str, str]
    if packed is not None:
        try:
            headers = _decode_headers(packed)
        except msgspec.DecodeError:
            headers = {}  # unreadable headers: the inbox rejects (dead-letters) the message
    else:
        headers = normalize_headers(
            {
                name[len(_HEADER) :]: value
                for name, value in fields.items()
                if name.startswith(_HEADER)
            }
        )
    # Positional (body, headers, partition, attempt, broker_id): one per message consumed.
    return Delivery(fields.get(_BODY, b""), headers, partition, attempt, entry_id.decode())


def _reply_entries(reply: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply as redis-py returns it: RESP2 ``[[key, entries]]``,
    RESP3 ``{key: [entries]}``; ``None`` when the wait ran out."""
    if not reply:
        return []
    streams = reply.items() if isinstance(reply, dict) else reply
    entries: list[Entry] = []
    for _, stream_entries in streams:
        if stream_entries and isinstance(stream_entries[0], list) and len(stream_entries) == 1:
            stream_entries = stream_entries[0]
        entries.extend((entry_id, fields) for entry_id, fields in stream_entries)
    return entries


def _failure_key(key: str, entry_id: bytes) -> str:
    """An entry's key in ``_RedisConsumer._failures``: entry ids repeat across partition streams."""
    return f"{key}/{entry_id.decode()}"


class _RedisConsumer:
    def __init__(self, broker: RedisBroker, group: str, handler: Handler) -> None:
        self.broker = broker
        self.group = group
        self.handler = handler
        self.batches = GroupCommit(handler, broker.topology, group)
        self.name = f"{broker.connection_name}-{uuid.uuid4().hex[:12]}"
        self._stopping = False
        self._lease_task: asyncio.Task[None] | None = None
        self._partitions: dict[int, asyncio.Task[None]] = {}
        #: Partitions beyond our share: their task finishes its batch, then the lease goes.
        self._releasing: set[int] = set()
        #: Handler failures per "stream key/entry id" (entry ids repeat across partition
        #: streams), for ``max_deliveries``.
        self._failures: dict[str, int] = {}

    def start(self) -> None:
        self._lease_task = asyncio.create_task(self._keep_leases())

    @property
    def owned(self) -> list[int]:
        """The partitions this consumer serves (not counting those it is giving up)."""
        return sorted(set(self._partitions) - self._releasing)

    async def _keep_leases(self) -> None:
        broker = self.broker
        ttl_ms = int(broker.topology.redelivery_after * 1000)
        while not self._stopping:
            try:
                alive = await broker.client.eval(
                    _HEARTBEAT, 1, broker.members_key(self.group), self.name, ttl_ms
                )
                # Ranked by name: every member sorts the same names the same way.
                members = sorted(
                    {m.decode() if isinstance(m, bytes) else str(m) for m in alive} | {self.name}
                )
                share = fair_share(
                    broker.topology.partitions, len(members), members.index(self.name)
                )
                await self._renew_leases(ttl_ms)
                await self._rebalance(share, ttl_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease upkeep for group %s failed: %r", self.group, exc)
            await asyncio.sleep(rebalance_interval(broker.topology))

    async def _renew_leases(self, ttl_ms: int) -> None:
        broker = self.broker
        for partition, task in list(self._partitions.items()):
            key = broker.lease_key(self.group, partition)
            if partition in self._releasing and task.done():
                # Its last entries are acked (or, if one was failing, left pending for the next
                # owner, who claims it first): the lease can go.
                self._partitions.pop(partition)
                self._releasing.discard(partition)
                await broker.client.eval(_RELEASE, 1, key, self.name)
            elif not await broker.client.eval(_RENEW, 1, key, self.name, ttl_ms):
                log.warning("lost the lease on %s; stopping that partition", key)
                self._partitions.pop(partition).cancel()
                self._releasing.discard(partition)

    async def _rebalance(self, share: int, ttl_ms: int) -> None:
        """Take free partitions up to our share; give up (gracefully) what is beyond it."""
        broker = self.broker
        serving = self.owned
        if len(serving) > share:
            # Their tasks stop after the batch in hand; the leases go once they have.
            self._releasing.update(serving[share:])
            return
        for partition in range(broker.topology.partitions):
            if len(self.owned) >= share or self._stopping:
                return
            if partition in self._partitions:
                continue
            key = broker.lease_key(self.group, partition)
            if await broker.client.set(key, self.name, nx=True, px=ttl_ms):
                self._partitions[partition] = asyncio.create_task(self._serve(partition))

    async def _serve(self, partition: int) -> None:
        broker = self.broker
        key = broker.stream_key(partition)
        # Whatever a dead predecessor left unacknowledged comes first, in stream order.
        claim_from: str | bytes | None = "0-0"
        # Our own pending entries are read again (before new ones) only when something may be
        # left pending: at start, after a retry, after an error.
        check_pending = True
        # The entries of the batch last committed: the next read acknowledges them (until a
        # read has succeeded they stay here, and acknowledging twice is harmless).
        acks: list[bytes] = []
        while not self._stopping and partition not in self._releasing:
            try:
                if claim_from is not None:
                    # A claim takes every pending entry, ours too: acknowledge ours first.
                    await self._acknowledge(key, acks)
                    reply = await broker.client.xautoclaim(
                        key, self.group, self.name, min_idle_time=0, start_id=claim_from, count=500
                    )
                    claim_from = None if reply[0] in (b"0-0", "0-0") else reply[0]
                entries = await self._read(key, "0", acks) if check_pending else []
                if not entries:
                    entries = await self._read(key, ">", acks, block=READ_BLOCK_MS)
                check_pending = True
                if await self._handle_batch(partition, key, entries):
                    acks.extend(entry_id for entry_id, _ in entries)
                    check_pending = False
                    continue
                for entry_id, fields in entries:
                    if self._stopping:
                        break
                    if not await self._handle(partition, key, entry_id, fields):
                        # A retry: after a short pause, read the pending entries again, so the
                        # failed one comes back first and the stream's order holds.
                        failures = self._failures.get(_failure_key(key, entry_id), 1)
                        await asyncio.sleep(retry_pause(failures))
                        break
                else:
                    check_pending = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading %s for group %s failed: %r", key, self.group, exc)
                check_pending = True
                await asyncio.sleep(0.2)
        # Stopping, or giving the partition up: what was committed is acknowledged before the
        # lease goes. (If this fails the entries stay pending, and whoever reads the partition
        # next gets them again; the inbox knows them.)
        try:
            await self._acknowledge(key, acks)
        except Exception as exc:
            log.warning("acknowledging on %s for group %s failed: %r", key, self.group, exc)

    async def _acknowledge(self, key: str, acks: list[bytes]) -> None:
        """Acknowledge ``acks`` now (and empty the list) instead of with the next read."""
        if acks:
            await self.broker.client.xack(key, self.group, *acks)
            acks.clear()

    async def _read(
        self, key: str, start: str, acks: list[bytes], block: int | None = None
    ) -> list[Entry]:
        """Acknowledge ``acks`` (emptying the list), then read up to ``prefetch`` entries of
        ``key`` from ``start`` (``">"``: new ones, ``"0"``: our pending ones); with ``block``,
        wait up to that many ms for new ones if there are none."""
        prefetch = self.broker.topology.prefetch
        entries = await self._scripted_read(key, start, prefetch, acks)
        acks.clear()
        if entries or block is None:
            return entries
        # Nothing yet: wait with the blocking command (a script cannot block), for one entry
        # only. Its reply is parsed by redis-py (about 20 microseconds per entry), and a
        # consumer that keeps up with its producers waits here before almost every batch: asked
        # for a whole batch, it parsed most entries this way (a fifth of a following consumer's
        # CPU). The rest of what has arrived comes with the script, one round trip more.
        reply = await self.broker.client.xreadgroup(
            self.group, self.name, {key: start}, count=1, block=block
        )
        entries = _reply_entries(reply)
        if entries and prefetch > 1:
            entries.extend(await self._scripted_read(key, start, prefetch - 1, []))
        return entries

    async def _scripted_read(
        self, key: str, start: str, count: int, acks: list[bytes]
    ) -> list[Entry]:
        """One :data:`_READ`: acknowledge ``acks``, then up to ``count`` entries from ``start``."""
        pieces = await self.broker.client.eval(
            _READ, 1, key, self.group, self.name, count, start, *acks
        )
        return _entries(_joined(pieces))

    async def _handle_batch(self, partition: int, key: str, entries: list[Entry]) -> bool:
        """Handle consecutive entries in one go (one commit); False: one by one. The caller
        acknowledges them (with its next read) once this returns True.

        A single entry goes this way too: the group commit then lets what other partitions
        read meanwhile join the next commit, instead of a transaction per message."""
        present = [(entry_id, fields) for entry_id, fields in entries if fields]
        if not entries or len(present) != len(entries):
            return False
        failures = self._failures
        deliveries = [
            _delivery(
                entry_id,
                fields,
                partition,
                # Nothing failing (the usual case): no entry's key is formatted to look it up.
                failures.get(_failure_key(key, entry_id), 0) + 1 if failures else 1,
            )
            for entry_id, fields in present
        ]
        return await self.batches.run(deliveries)

    async def _handle(
        self, partition: int, key: str, entry_id: bytes, fields: dict[bytes, bytes] | None
    ) -> bool:
        """Handle one entry; False when it must be retried before anything after it."""
        broker = self.broker
        if not fields:
            # The entry was trimmed away while pending: nothing left to deliver.
            await broker.client.xack(key, self.group, entry_id)
            return True
        entry = _failure_key(key, entry_id)
        delivery = _delivery(entry_id, fields, partition, self._failures.get(entry, 0) + 1)
        settlement = await run_handler(self.handler, delivery, broker.topology, self.group)
        if settlement.outcome is Outcome.RETRY:
            self._failures[entry] = delivery.attempt
            return False
        self._failures.pop(entry, None)
        if settlement.outcome is Outcome.DEAD_LETTER:
            await broker.dead_letter(settlement, delivery, self.group)
        await broker.client.xack(key, self.group, entry_id)
        return True

    async def stop(self) -> None:
        """Stop reading; let handlers in flight finish and ack; give the leases back."""
        self._stopping = True
        if self._lease_task is not None:
            self._lease_task.cancel()
            await asyncio.gather(self._lease_task, return_exceptions=True)
        await asyncio.gather(*self._partitions.values(), return_exceptions=True)
        for partition in list(self._partitions):
            with contextlib.suppress(Exception):
                await self.broker.client.eval(
                    _RELEASE, 1, self.broker.lease_key(self.group, partition), self.name
                )
        self._partitions.clear()
        self._releasing.clear()
        with contextlib.suppress(Exception):
            # The others rebalance at once instead of waiting for our heartbeat to expire.
            await self.broker.client.zrem(self.broker.members_key(self.group), self.name)
        if self in self.broker._consumers:
            self.broker._consumers.remove(self)

    def abandon(self) -> None:
        self._stopping = True
        if self._lease_task is not None:
            self._lease_task.cancel()
        for task in self._partitions.values():
            task.cancel()
