"""NATS JetStream adapter (nats-py): acknowledged publishing, durable pull consumers.

Topology declared for a bus ``B`` with groups ``G``:

* a file-backed stream ``B`` on the subjects ``B.p.*``; partition ``i`` is the subject token
  ``B.p.<i>`` (publishers pick it with ``partition_of(stream_id)``). ``Nats-Msg-Id`` is the
  event id, so JetStream itself drops a duplicate publication within its duplicate window (a
  relay retrying after a lost acknowledgement);
* per group and partition: a durable pull consumer ``G-p<i>`` filtered on ``B.p.<i>`` with
  explicit acks, ``ack_wait = redelivery_after`` and ``max_ack_pending = prefetch``;
* a key-value bucket ``B_leases`` (entries live ``redelivery_after``) saying which consumer of
  group ``G`` owns partition ``i`` (key ``G.p<i>``), and which consumers of ``G`` are alive
  (one key ``G.m.<random id>`` per consumer). Every ``rebalance_interval`` (a third of
  ``redelivery_after``) a consumer renews its member key and its leases (a compare-and-set on
  the revision), lists the member keys and computes its :func:`~tidings.brokers.port.fair_share`
  from their number and its rank among them. Below its share it takes free partitions (a
  create-if-absent); above it, it stops fetching from the extra ones, lets the batch in hand
  finish and be acked, and only then deletes their leases (compare-and-set) so that another
  member takes them. Only the owner pulls from a partition, so competing consumers never
  overtake each other within it. When a consumer dies its member key and leases expire; the
  others see one member fewer and take its partitions over. A new owner first waits
  ``ack_wait`` if messages are still unacknowledged, so JetStream hands them back before
  anything newer;
* a stream ``B_dead`` on ``B.dead.*`` for dead letters (subject ``B.dead.<G>``).

The owner fetches whatever is available, up to ``prefetch`` (without waiting to fill a batch;
pull requests of its own, :mod:`tidings.brokers.nats_pull`), gives it to a batch-capable handler
(the inbox) at once and acknowledges it after the single commit (the batch's acks written as
one block, ``Client.acknowledge``); otherwise, or if the batch fails, message by message.
JetStream numbers the deliveries of a consumer without gaps; a jump means one was sent but never
received (a dropped connection), so the messages after it are handed back (a delayed nak) and
the partition waits until the lost one is redelivered too; the next fetch brings them together
and they are handled in stream order, instead of letting them overtake it. A failed message is
retried in place after a short pause (``in_progress`` keeps JetStream from redelivering it
meanwhile), up to ``max_deliveries``, then dead-lettered.

Publishing sends every message of a batch at once, each with its own reply subject, and waits
until JetStream has acknowledged every one (:mod:`tidings.brokers.nats_confirms`); a refusal of
any of them raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from tidings.brokers.nats_confirms import PublishAcks
from tidings.brokers.nats_pull import Puller
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
from tidings.brokers.wire import HEADERS, encode_headers, normalize_headers
from tidings.core.messages import StoredEvent
from tidings.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    PublishNotConfirmed,
    TopologyError,
)

try:
    import nats
    import nats.aio.client
    import nats.errors
    import nats.js.errors
    from nats.js import api
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "the NATS adapter needs nats-py: pip install 'tidings[nats]'"
    ) from missing

from tidings.brokers.nats_client import (
    Client,
    JetStreamNumbers,
    TextHeaders,
    header_block,
    jetstream_numbers,
)

log = logging.getLogger("tidings.brokers.nats")

#: JetStream refuses the message unless the subject belongs to this stream.
EXPECTED_STREAM = "Nats-Expected-Stream"

#: How long one pull request waits for messages before asking again (and noticing a stop).
FETCH_WAIT = 1.0


def _translate(error: BaseException, doing: str) -> BrokerError:
    """The one place where nats-py errors become tidings errors."""
    if isinstance(error, BrokerError):
        return error
    if isinstance(error, nats.js.errors.NoStreamResponseError):
        return PublishNotConfirmed(f"no JetStream stream took the message while {doing}")
    if isinstance(error, nats.js.errors.NotFoundError):
        return TopologyError(f"missing stream or consumer while {doing} (declare() first): {error}")
    if isinstance(error, nats.js.errors.BadRequestError):
        return TopologyError(f"JetStream refused the request while {doing}: {error}")
    if isinstance(error, nats.js.errors.APIError):
        return PublishNotConfirmed(f"JetStream error while {doing}: {error}")
    if isinstance(
        error,
        nats.errors.ConnectionClosedError
        | nats.errors.NoServersError
        | nats.errors.StaleConnectionError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.OutboundBufferLimitError
        | nats.errors.TimeoutError
        | asyncio.TimeoutError
        | OSError,
    ):
        return BrokerUnavailable(f"NATS connection problem while {doing}: {error!r}")
    return BrokerError(f"NATS error while {doing}: {error!r}")


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


def partition_subject(topology: Topology, partition: int) -> str:
    return f"{topology.name}.p.{partition}"


def dead_letter_stream(topology: Topology) -> str:
    return f"{topology.name}_dead"


def dead_letter_subject(topology: Topology, group: str) -> str:
    return f"{topology.name}.dead.{group}"


def durable_name(group: str, partition: int) -> str:
    return f"{group}-p{partition}"


def lease_bucket(topology: Topology) -> str:
    return f"{topology.name}_leases"


def lease_key(group: str, partition: int) -> str:
    return f"{group}.p{partition}"


def member_key(group: str, member: str) -> str:
    return f"{group}.m.{member}"


class NatsBroker:
    """The broker port on NATS JetStream (see the module docstring for the topology)."""

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        confirm_timeout: float = 30.0,
        connection_name: str | None = None,
    ) -> None:
        self.url = url
        self.topology = topology
        self.confirm_timeout = confirm_timeout
        self.connection_name = connection_name or f"tidings:{topology.name}"
        self._client: Any = None
        self._js: Any = None
        self._acks: PublishAcks | None = None
        self._consumers: list[_NatsConsumer] = []
        self._subjects = [partition_subject(topology, i) for i in range(topology.partitions)]

    async def connect(self) -> None:
        if self._client is not None:
            return
        with _driver_errors(f"connecting to {self.url}"):
            client = Client()
            await client.connect(
                self.url,
                name=self.connection_name,
                max_reconnect_attempts=-1,  # keep trying: the broker is expected to come back
                # Typed int, used as seconds to sleep: half a second is what is meant.
                reconnect_time_wait=0.5,  # type: ignore[arg-type]
                error_cb=self._log_error,
            )
            self._client = client
            self._js = client.jetstream(timeout=self.confirm_timeout)

    @staticmethod
    async def _log_error(error: Exception) -> None:
        log.warning("NATS client error: %r", error)

    @property
    def client(self) -> Any:
        """The nats-py client (for tests that need to drop the connection)."""
        if self._client is None:
            raise BrokerUnavailable(f"NATS broker for bus {self.topology.name!r}: not connected")
        return self._client

    @property
    def js(self) -> Any:
        self.client  # noqa: B018 - raises if not connected
        return self._js

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.stop()
        self._consumers.clear()
        await self._drop_client()

    async def abort(self) -> None:
        """Close the connection without acknowledging anything in flight (a crashed process)."""
        for consumer in self._consumers:
            consumer.abandon()
        self._consumers.clear()
        await self._drop_client()

    async def _drop_client(self) -> None:
        if self._client is not None:
            client, self._client, self._js, self._acks = self._client, None, None, None
            with contextlib.suppress(Exception):
                await client.close()

    # -- topology --------------------------------------------------------------------------

    async def declare(self) -> None:
        topology = self.topology
        with _driver_errors(f"declaring bus {topology.name!r}"):
            await self._ensure_stream(topology.name, [f"{topology.name}.p.*"])
            await self._ensure_stream(dead_letter_stream(topology), [f"{topology.name}.dead.*"])
            for group in topology.groups:
                for partition in range(topology.partitions):
                    await self.js.add_consumer(
                        topology.name,
                        api.ConsumerConfig(
                            durable_name=durable_name(group, partition),
                            filter_subject=partition_subject(topology, partition),
                            ack_policy=api.AckPolicy.EXPLICIT,
                            deliver_policy=api.DeliverPolicy.ALL,
                            ack_wait=topology.redelivery_after,
                            max_ack_pending=topology.prefetch,
                            max_waiting=512,
                        ),
                    )
            try:
                await self.js.key_value(lease_bucket(topology))
            except nats.js.errors.BucketNotFoundError:
                await self.js.create_key_value(
                    api.KeyValueConfig(
                        bucket=lease_bucket(topology),
                        ttl=topology.redelivery_after,
                        storage=api.StorageType.FILE,
                    )
                )

    async def _ensure_stream(self, name: str, subjects: list[str]) -> None:
        try:
            info = await self.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(
                name=name, subjects=subjects, storage=api.StorageType.FILE, duplicate_window=120.0
            )
            return
        if sorted(info.config.subjects or []) != sorted(subjects):
            raise TopologyError(
                f"JetStream stream {name!r} exists with subjects {info.config.subjects}, "
                f"expected {subjects}"
            )

    async def delete(self) -> None:
        """Delete the bus's streams (and with them their consumers)."""
        with _driver_errors(f"deleting bus {self.topology.name!r}"):
            for name in (self.topology.name, dead_letter_stream(self.topology)):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self.js.delete_stream(name)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.js.delete_key_value(lease_bucket(self.topology))

    # -- publishing ------------------------------------------------------------------------

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
        partitions = topology.partitions
        subjects = self._subjects
        event_id = HEADERS["event_id"]
        with _driver_errors(f"publishing {len(messages)} message(s) to {topology.name!r}"):
            outgoing = []
            for message in messages:
                headers = encode_headers(message)
                headers["Nats-Msg-Id"] = headers[event_id]
                headers[EXPECTED_STREAM] = topology.name
                subject = subjects[partition_of(partition_key(message), partitions)]
                # Written out once here: nats-py would encode the dict header by header.
                outgoing.append((subject, message.payload, header_block(headers)))
            if self._acks is None:
                self._acks = PublishAcks(self.client, self.confirm_timeout)
            await self._acks.publish(outgoing)

    async def publish_raw(self, partition: int, headers: Mapping[str, str], body: bytes) -> None:
        subject = partition_subject(self.topology, partition % self.topology.partitions)
        with _driver_errors(f"publishing a raw message to {subject}"):
            await self.js.publish(
                subject, body, stream=self.topology.name, headers=dict(headers) or None
            )

    # -- consuming -------------------------------------------------------------------------

    async def consume(self, group: str, handler: Handler) -> _NatsConsumer:
        self.topology.require_group(group)
        consumer = _NatsConsumer(self, group, handler)
        with _driver_errors(f"subscribing group {group!r} of bus {self.topology.name!r}"):
            await consumer.start()
        self._consumers.append(consumer)
        return consumer

    async def dead_letter(self, settlement: Settlement, delivery: Delivery, group: str) -> None:
        with _driver_errors(f"dead-lettering to {dead_letter_subject(self.topology, group)}"):
            await self.js.publish(
                dead_letter_subject(self.topology, group),
                delivery.body,
                stream=dead_letter_stream(self.topology),
                headers=dict(settlement.dead_letter_headers),
            )

    async def dead_letters(self, group: str, limit: int = 100) -> list[Delivery]:
        self.topology.require_group(group)
        found: list[Delivery] = []
        sequence = 1
        with _driver_errors(f"reading dead letters of group {group!r}"):
            while len(found) < limit:
                try:
                    raw = await self.js.get_msg(
                        dead_letter_stream(self.topology),
                        seq=sequence,
                        subject=dead_letter_subject(self.topology, group),
                        next=True,
                    )
                except nats.js.errors.NotFoundError:
                    break
                found.append(
                    Delivery(
                        body=raw.data or b"",
                        headers=normalize_headers(raw.headers),
                        partition=-1,
                        attempt=1,
                        broker_id=str(raw.seq),
                    )
                )
                sequence = raw.seq + 1
        return found


class _NatsConsumer:
    """Serves its fair share of partitions, holding their leases (see the module docstring)."""

    def __init__(self, broker: NatsBroker, group: str, handler: Handler) -> None:
        self.broker = broker
        self.group = group
        self.handler = handler
        self.batches = GroupCommit(handler, broker.topology, group)
        self.name = f"{broker.connection_name}-{uuid.uuid4().hex[:12]}".encode()
        #: Ranks the members (every member sorts the same keys the same way).
        self.member = member_key(group, uuid.uuid4().hex)
        self._kv: Any = None
        self._pullers: dict[int, Puller] = {}
        #: Partitions served: their task and the lease's last revision.
        self._partitions: dict[int, tuple[asyncio.Task[None], int]] = {}
        #: Partitions beyond our share: their task finishes its batch, then the lease goes.
        self._releasing: set[int] = set()
        self._lease_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        topology = self.broker.topology
        self._kv = await self.broker.js.key_value(lease_bucket(topology))
        for partition in range(topology.partitions):
            puller = Puller(
                self.broker.client,
                topology.name,
                durable_name(self.group, partition),
                topology.prefetch,
            )
            await puller.start()
            self._pullers[partition] = puller
        await self._kv.put(self.member, self.name)
        await self._rebalance()
        self._lease_task = asyncio.create_task(self._keep_leases())

    @property
    def owned(self) -> list[int]:
        """The partitions this consumer serves (not counting those it is giving up)."""
        return sorted(set(self._partitions) - self._releasing)

    async def _members(self) -> list[str]:
        """The live members of the group: their keys, sorted (a dead one's key expired)."""
        watcher = await self._kv.watch(
            member_key(self.group, "*"), ignore_deletes=True, meta_only=True
        )
        members = {self.member}
        try:
            async for entry in watcher:
                if entry is None:  # the end of what is stored now
                    break
                members.add(entry.key)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()
        return sorted(members)

    async def _rebalance(self) -> None:
        """Take free partitions up to our share; give up (gracefully) what is beyond it."""
        if self._stopping:
            return
        members = await self._members()
        share = fair_share(
            self.broker.topology.partitions, len(members), members.index(self.member)
        )
        serving = self.owned
        if len(serving) > share:
            for partition in serving[share:]:
                # The serving task sees this after its current batch (acked), and ends; the
                # lease is deleted once it has (_renew_leases), never before.
                self._releasing.add(partition)
            return
        for partition in range(self.broker.topology.partitions):
            if len(self.owned) >= share or self._stopping:
                return
            if partition in self._partitions:
                continue
            try:
                revision = await self._kv.create(lease_key(self.group, partition), self.name)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another consumer holds it
            task = asyncio.create_task(self._serve(partition))
            self._partitions[partition] = (task, revision)

    async def _renew_leases(self) -> None:
        await self._kv.put(self.member, self.name)
        for partition, (task, revision) in list(self._partitions.items()):
            key = lease_key(self.group, partition)
            if partition in self._releasing and task.done():
                # Everything it fetched is settled: the next owner starts right after it.
                self._partitions.pop(partition)
                self._releasing.discard(partition)
                # The acks reach the server before the lease goes, so the next owner does not
                # find them pending (and wait ack_wait for nothing).
                await self.broker.client.flush()
                with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                    await self._kv.delete(key, last=revision)
                continue
            try:
                revision = await self._kv.update(key, self.name, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                log.warning("lost the lease on %s; stopping that partition", key)
                self._partitions.pop(partition)
                self._releasing.discard(partition)
                task.cancel()
                continue
            self._partitions[partition] = (task, revision)

    async def _keep_leases(self) -> None:
        while not self._stopping:
            await asyncio.sleep(rebalance_interval(self.broker.topology))
            try:
                await self._renew_leases()
                await self._rebalance()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease upkeep for group %s failed: %r", self.group, exc)

    async def _serve(self, partition: int) -> None:
        topology = self.broker.topology
        durable = durable_name(self.group, partition)
        puller = self._pullers[partition]
        info = await self._consumer_info(durable)
        if info is None or info.num_ack_pending:
            # A predecessor died holding messages (or the server cannot say): wait until
            # JetStream gives them back (after ack_wait), so they are fetched before anything
            # newer, and read the count again after that.
            await self._pause(topology.redelivery_after)
            info = await self._consumer_info(durable)
        #: The consumer sequence of the next delivery, when known: JetStream numbers every
        #: delivery of this durable consumer (redeliveries too) 1, 2, 3, ..., so a jump means
        #: a delivery we never received. Whatever was delivered before now (to a predecessor, or
        #: to this consumer when it served the partition earlier) has a lower number, so a late
        #: arrival of it cannot pass for the next one. Unknown (None), the first delivery
        #: fetched sets the count.
        expected = None if info is None else int(info.delivered.consumer_seq) + 1
        while not self._stopping and partition not in self._releasing:
            try:
                messages = await puller.fetch(FETCH_WAIT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Reconnecting, or the server is briefly away: ask again shortly.
                log.warning("fetch from %s failed: %r", durable, exc)
                await asyncio.sleep(FETCH_WAIT)
                continue
            if not messages:
                continue  # nothing came within FETCH_WAIT
            numbers = [jetstream_numbers(message.reply) for message in messages]
            sequences = [number.consumer for number in numbers]
            in_order = deliveries_in_order(sequences, expected)
            if in_order:
                # Redeliveries come before new messages, but not always in the stream's order
                # among themselves (one handed back with a delay after a lost delivery is due
                # later than the lost one's neighbours): their stream sequence says it.
                delivered = zip(messages[:in_order], numbers[:in_order], strict=True)
                batch = sorted(delivered, key=_stream_sequence)
                await self._handle_batch(batch, partition)
                expected = sequences[in_order - 1] + 1
            if in_order < len(messages):
                handed_back = await self._wait_for_lost_delivery(
                    messages[in_order:], durable, puller
                )
                # Counting goes on from the last delivery seen: the redeliveries come next, and
                # anything delivered meanwhile to a request we gave up on shows as a new gap.
                expected = max(handed_back, *sequences) + 1

    async def _consumer_info(self, durable: str) -> Any:
        """The durable consumer's state at the server, or None (logged) if it cannot be read."""
        try:
            return await self.broker.js.consumer_info(self.broker.topology.name, durable)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("consumer info for %s failed: %r", durable, exc)
            return None

    async def _handle_batch(
        self, batch: Sequence[tuple[Any, JetStreamNumbers]], partition: int
    ) -> None:
        messages = [message for message, _ in batch]
        deliveries = [_delivery(message, numbers, partition) for message, numbers in batch]
        if await self.batches.run(deliveries):
            # One block of acks for the batch (what message.ack() sends, for each message).
            await self._settle(self.broker.client.acknowledge(messages))
            return
        for message, delivery in zip(messages, deliveries, strict=True):
            await self._handle_one(message, delivery)

    async def _wait_for_lost_delivery(
        self, overtaking: Sequence[Any], durable: str, puller: Puller
    ) -> int:
        """A delivery this consumer never received (sent while the connection dropped, or to an
        inbox it has left) is pending at the server, and ``overtaking`` came after it (or is a
        late delivery from before the count started). Handling them now would break the
        stream's order, and JetStream redelivers the lost one only when its ack_wait runs out.
        So hand them back to come again after that (a delayed nak), with anything received and
        not yet fetched, and stop fetching until both are due: the next fetch then brings the
        lost one and these together (at most ``prefetch`` are pending), and they are handled in
        stream order. The puller answers on a new inbox afterwards, so a request still open from
        before cannot slip a newer message in unseen. Returns the highest delivery number
        handed back."""
        topology = self.broker.topology
        overtaking = [*overtaking, *await puller.restart()]
        log.warning(
            "%s: a delivery was lost in transit; holding %d later message(s) back for %.1fs so "
            "that it is redelivered first",
            durable,
            len(overtaking),
            topology.redelivery_after,
        )
        for message in overtaking:
            await self._settle(message.nak(delay=topology.redelivery_after))
        # A little past the delayed naks' expiry, so they and the lost one are all due again.
        await self._pause(topology.redelivery_after * 1.2 + 0.1)
        return max(jetstream_numbers(message.reply).consumer for message in overtaking)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the consumer stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    async def _handle_one(self, message: Any, delivery: Delivery) -> None:
        topology = self.broker.topology
        settlement = await run_handler(self.handler, delivery, topology, self.group)
        while settlement.outcome is Outcome.RETRY:
            # Retried in place while the rest of the fetched batch waits, so the stream keeps
            # its order; in_progress() keeps JetStream from handing it to someone else.
            await self._settle(message.in_progress())
            await asyncio.sleep(retry_pause(delivery.attempt))
            delivery = replace(delivery, attempt=delivery.attempt + 1)
            settlement = await run_handler(self.handler, delivery, topology, self.group)
        if settlement.outcome is Outcome.DEAD_LETTER:
            try:
                await self.broker.dead_letter(settlement, delivery, self.group)
            except BrokerError as exc:
                # Not acked: JetStream redelivers after ack_wait; the inbox absorbs it.
                log.warning("could not dead-letter a message, leaving it unacked: %r", exc)
                return
        await self._settle(message.ack())

    async def _settle(self, settling: Awaitable[None]) -> None:
        try:
            await settling
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not acked: JetStream redelivers after ack_wait; the inbox absorbs it.
            log.warning("could not settle a message of %s: %r", self.group, exc)

    async def stop(self) -> None:
        """Stop fetching; handlers in flight finish and are acked; the leases are given back."""
        self._stopping = True
        self._stopped.set()
        if self._lease_task is not None:
            self._lease_task.cancel()
            await asyncio.gather(self._lease_task, return_exceptions=True)
        await asyncio.gather(
            *(task for task, _ in self._partitions.values()), return_exceptions=True
        )
        for partition, (_, revision) in self._partitions.items():
            with contextlib.suppress(Exception):
                await self._kv.delete(lease_key(self.group, partition), last=revision)
        self._partitions.clear()
        self._releasing.clear()
        with contextlib.suppress(Exception):
            await self._kv.delete(self.member)  # the others rebalance without waiting for expiry
        for puller in self._pullers.values():
            with contextlib.suppress(Exception):
                await puller.stop()
        if self in self.broker._consumers:
            self.broker._consumers.remove(self)

    def abandon(self) -> None:
        self._stopping = True
        self._stopped.set()
        if self._lease_task is not None:
            self._lease_task.cancel()
        for task, _ in self._partitions.values():
            task.cancel()


def deliveries_in_order(sequences: Sequence[int], expected: int | None) -> int:
    """How many of a fetch's deliveries (their consumer sequences) follow on without a gap,
    counting from ``expected`` when it is known."""
    following = expected if expected is not None else (sequences[0] if sequences else 0)
    for count, sequence in enumerate(sequences):
        if sequence != following:
            return count
        following += 1
    return len(sequences)


def _stream_sequence(delivered: tuple[Any, JetStreamNumbers]) -> int:
    return delivered[1].stream


def _delivery(message: Any, numbers: JetStreamNumbers, partition: int) -> Delivery:
    headers = message.headers
    if type(headers) is not TextHeaders:
        # Not read by the adapter's client (nats-py's own reading, with fast_mail_parser
        # installed, say): made str -> str here. TextHeaders are that already.
        headers = normalize_headers(headers)
    # Positional (body, headers, partition, attempt, broker_id): one per message consumed.
    return Delivery(message.data or b"", headers, partition, numbers.delivered, str(numbers.stream))
