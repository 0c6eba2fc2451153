"""The broker port: what every broker adapter (memory, RabbitMQ, NATS, Redis) provides.

An adapter is bound to one *bus* (a :class:`Topology`) and offers five operations:

* ``connect()`` / ``close()``;
* ``declare()``: create the bus's exchanges, queues, streams, consumer groups and dead-letter
  destinations from the topology. Idempotent: running it again (from every process, at every
  start) changes nothing;
* ``publish(messages)``: send :class:`~tidings.core.messages.StoredEvent` s and return only once
  the broker has *confirmed* every one of them (they are in flight together, for throughput). If
  it raises, some may have been stored anyway: the caller retries, consumers deduplicate;
* ``consume(group, handler)``: deliver the group's messages to ``handler``. The message is
  acknowledged only after the handler returns: the handler is where the consumer commits its
  transaction and inbox record (see :mod:`tidings.brokers.inbox`). If the handler raises, the
  message is delivered again after a short growing pause, before anything behind it in its
  partition; past ``max_deliveries`` it is dead-lettered. If the consumer dies instead, the
  broker gives its unacknowledged messages to another consumer of the group. If it raises
  :class:`~tidings.errors.MessageRejected` (undecodable, unverifiable), it is dead-lettered at
  once with the reason. A dead letter keeps the original body and headers, plus
  ``tidings-dead-letter-*`` headers saying why;
* ``publish_raw(partition, headers, body)``: send bytes as they are, confirmed (to replay a
  dead letter exactly, or to test what consumers do with hostile input);
* ``dead_letters(group)``: read (without removing) what was dead-lettered, for inspection.

Per-stream order with competing consumers: each message goes to partition
``partition_of(stream_id, partitions)``; within a group each partition is served by one consumer
at a time, handling one message after another. The consumers of a group share the partitions
fairly (:func:`fair_share`): one that joins takes its share within a few
:func:`rebalance_interval` s, the others give up what they hold beyond theirs (after acking what
they are handling, so the next owner starts exactly where they stopped), and the partitions of
one that leaves or dies are taken over by the rest. So adding consumers scales out while each
stream stays in order. How each adapter tracks the members is in its module docstring.

Batches: when the handler is a :class:`BatchHandler` (the inbox), an adapter hands it whatever
it has fetched for a partition (up to ``prefetch``, never waiting for more), through the
consumer's :class:`GroupCommit`, so the batches of several partitions that are ready at the
same time share one transaction. The messages are acknowledged only after that commit. If a
batch fails, its messages are handled one by one under the rules above.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from tidings.core.frozen import quick_init
from tidings.core.messages import StoredEvent
from tidings.errors import ConfigurationError, MessageRejected

log = logging.getLogger("tidings.brokers")

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")

DEAD_LETTER_REASON = "tidings-dead-letter-reason"
DEAD_LETTER_GROUP = "tidings-dead-letter-group"
DEAD_LETTER_ATTEMPTS = "tidings-dead-letter-attempts"
DEAD_LETTER_AT = "tidings-dead-lettered-at"


@dataclass(frozen=True, slots=True)
class Topology:
    """Declarative description of one bus, from which adapters declare everything they need."""

    #: Bus name: the RabbitMQ exchange, the NATS stream, the Redis key prefix.
    name: str
    #: Consumer groups (one queue set / durable consumer set / Redis group each).
    groups: tuple[str, ...] = ()
    #: Number of partitions; per-stream order holds within a partition.
    partitions: int = 8
    #: Handler failures tolerated before a message is dead-lettered.
    max_deliveries: int = 5
    #: Seconds after which a message held by a silent consumer is given to another one (NATS
    #: ack wait, Redis idle time before XAUTOCLAIM, partition lease time). RabbitMQ notices a dead
    #: consumer by its closed connection instead.
    redelivery_after: float = 30.0
    #: Messages fetched ahead per partition.
    prefetch: int = 64
    #: Larger bodies are rejected on publish and dead-lettered on receipt.
    max_message_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        for value, what in [(self.name, "bus name"), *((g, "group name") for g in self.groups)]:
            if not isinstance(value, str) or not _NAME.match(value):
                raise ConfigurationError(
                    f"{what} {value!r} must be 1-80 characters of letters, digits, '_' or '-' "
                    "(it becomes part of exchange, queue, stream and subject names)"
                )
        if len(set(self.groups)) != len(self.groups):
            raise ConfigurationError(f"bus {self.name!r}: group names must be unique")
        for attribute in ("partitions", "max_deliveries", "prefetch", "max_message_bytes"):
            value = getattr(self, attribute)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"bus {self.name!r}: {attribute} must be an int >= 1")
        if self.partitions > 1024:
            raise ConfigurationError(f"bus {self.name!r}: at most 1024 partitions")
        if not self.redelivery_after > 0:
            raise ConfigurationError(f"bus {self.name!r}: redelivery_after must be > 0 seconds")

    def require_group(self, group: str) -> None:
        if group not in self.groups:
            raise ConfigurationError(
                f"group {group!r} is not declared on bus {self.name!r} "
                f"(declared: {', '.join(self.groups) or 'none'}); add it to Topology(groups=...)"
            )


def partition_of(key: str | None, partitions: int) -> int:
    """The partition of a stream: a stable hash (CRC-32, same in every process and language)."""
    if partitions == 1 or not key:
        return 0
    return zlib.crc32(key.encode("utf-8")) % partitions


def rebalance_interval(topology: Topology) -> float:
    """How often a consumer renews its partition leases and checks its share: a third of
    ``redelivery_after``, so a lease is renewed twice before it could expire, and a consumer
    joining or leaving is balanced within a few of these."""
    return topology.redelivery_after / 3


def fair_share(partitions: int, members: int, rank: int | None = None) -> int:
    """How many partitions one of ``members`` consumers of a group should serve.

    With its ``rank`` among the members (0-based, every member seeing the same order) the
    shares add up to exactly ``partitions``: the first ``partitions % members`` members serve
    one more. Without a rank (the adapter cannot list the members) it is the rounded-up share,
    which every member may fill, so all partitions are always served; such an adapter needs
    another way to make members above ``partitions // members`` give way to one below it.
    """
    members = max(members, 1)
    base, extra = divmod(partitions, members)
    if rank is None:
        return base + (1 if extra else 0)
    return base + (1 if rank < extra else 0)


def partition_key(message: StoredEvent) -> str:
    """Events of one stream share a partition; events without a stream spread by their id."""
    return message.stream_id or str(message.event_id)


@quick_init
@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of a message to a consumer."""

    body: bytes
    headers: Mapping[str, str]
    partition: int
    #: 1 on the first delivery, then incremented on each redelivery (as far as the broker
    #: tracks it).
    attempt: int
    #: The broker's own id for this message (delivery tag, stream entry id, sequence number).
    broker_id: str = ""


Handler = Callable[[Delivery], Awaitable[None]]


@runtime_checkable
class BatchHandler(Protocol):
    """A handler that can also take several consecutive messages of one partition at once.

    ``handle_batch`` is all or nothing: it either handles every delivery (and commits them
    together) or raises having committed nothing. Adapters then fall back to handling the same
    deliveries one by one, so a failure is isolated to its own message and the usual rules
    (retry, dead-letter) apply to it alone. Batches only ever hold messages that are next in
    their partition, so per-stream order is unchanged.
    """

    async def __call__(self, delivery: Delivery) -> None: ...

    async def handle_batch(self, deliveries: Sequence[Delivery]) -> None: ...


@runtime_checkable
class PreparingHandler(Protocol):
    """A batch handler with per-message work that needs no transaction (decoding, verifying a
    signature): :class:`GroupCommit` calls ``prepare_batch`` with a partition's batch that must
    wait for an earlier batch's commit, as it is handed in, so that this work overlaps the
    database's instead of following it. ``handle_batch`` later gets the same deliveries, and
    must still work for any it finds unprepared (a batch that did not wait is not prepared).
    ``prepare_batch`` should not raise; if it does, the group commit logs it and stops
    preparing."""

    def prepare_batch(self, deliveries: Sequence[Delivery]) -> None: ...


@runtime_checkable
class Consumer(Protocol):
    """A running consumer; ``stop()`` lets in-flight handlers finish (and be acked)."""

    async def stop(self) -> None: ...


@runtime_checkable
class Broker(Protocol):
    """The port every adapter implements (see the module docstring)."""

    topology: Topology

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def declare(self) -> None: ...

    async def publish(self, messages: Sequence[StoredEvent]) -> None: ...

    async def publish_raw(self, partition: int, headers: Mapping[str, str], body: bytes) -> None:
        """Send a message exactly as given (replaying a dead letter byte for byte), confirmed."""
        ...

    async def consume(self, group: str, handler: Handler) -> Consumer: ...

    async def dead_letters(self, group: str, limit: int = 100) -> list[Delivery]: ...


class Outcome(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead-letter"


@dataclass(frozen=True, slots=True)
class Settlement:
    outcome: Outcome
    reason: str = ""
    dead_letter_headers: dict[str, str] = field(default_factory=dict)


async def run_handler(
    handler: Handler, delivery: Delivery, topology: Topology, group: str
) -> Settlement:
    """Run the handler for one delivery and decide how the adapter settles the message.

    Shared by every adapter so they all follow the same rules.
    """
    reason = ""
    if len(delivery.body) > topology.max_message_bytes:
        reason = (
            f"message body is {len(delivery.body)} bytes, more than the bus limit of "
            f"{topology.max_message_bytes}"
        )
    else:
        try:
            await handler(delivery)
        except MessageRejected as rejected:
            reason = rejected.reason
        except Exception as exc:
            if delivery.attempt < topology.max_deliveries:
                log.warning(
                    "handler for group %s failed on attempt %d of %d; redelivering: %r",
                    group,
                    delivery.attempt,
                    topology.max_deliveries,
                    exc,
                )
                return Settlement(Outcome.RETRY)
            reason = (
                f"handler failed {delivery.attempt} times; last error: {type(exc).__name__}: {exc}"
            )
        else:
            return Settlement(Outcome.ACK)
    log.warning("dead-lettering a message of group %s: %s", group, reason)
    return Settlement(
        Outcome.DEAD_LETTER,
        reason,
        dead_letter_headers(delivery, reason, group),
    )


def dead_letter_headers(delivery: Delivery, reason: str, group: str) -> dict[str, str]:
    headers = dict(delivery.headers)
    headers[DEAD_LETTER_REASON] = reason[:2000]
    headers[DEAD_LETTER_GROUP] = group
    headers[DEAD_LETTER_ATTEMPTS] = str(delivery.attempt)
    headers[DEAD_LETTER_AT] = datetime.now(UTC).isoformat()
    return headers


def retry_pause(attempt: int) -> float:
    """Seconds to wait before redelivering after the ``attempt``-th failure (short, growing)."""
    return float(min(0.01 * 2 ** (attempt - 1), 1.0))


async def run_batch(
    handler: Handler,
    deliveries: Sequence[Delivery],
    topology: Topology,
    group: str,
    *,
    minimum: int = 2,
) -> bool:
    """Try to handle consecutive deliveries as one batch; False means: handle them one by one."""
    if len(deliveries) < minimum or not deliveries or not isinstance(handler, BatchHandler):
        return False
    if any(len(d.body) > topology.max_message_bytes for d in deliveries):
        return False
    try:
        await handler.handle_batch(deliveries)
    except Exception as exc:
        log.debug("batch of %d for group %s failed (%r); one by one", len(deliveries), group, exc)
        return False
    return True


async def cancel_tasks(tasks: Sequence[asyncio.Task[object]]) -> None:
    """Cancel tasks and wait until they are gone (consumer shutdown)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class GroupCommit:
    """Handle the batches of all a consumer's partitions together, one transaction at a time.

    Every partition of a consumer hands its next batch here (:meth:`run`). If no commit is in
    progress it is handled at once (never waiting for more to arrive); batches handed in while
    one is being committed wait for it and then go together, in one ``handle_batch`` call: one
    commit for several partitions. So batches grow with load on their own, while an idle
    consumer commits each message as soon as it arrives. Each partition still has at most one
    batch in flight, so per-stream order is unchanged. A batch that waits is handed to the
    handler's ``prepare_batch`` meanwhile, if it has one (:class:`PreparingHandler`).

    If the combined batch fails, each partition's batch is tried on its own; :meth:`run` returns
    whether the caller's batch was committed (False: handle its messages one by one).
    """

    def __init__(self, handler: Handler, topology: Topology, group: str) -> None:
        self.handler = handler
        self.topology = topology
        self.group = group
        self._waiting: list[tuple[Sequence[Delivery], asyncio.Future[bool | None]]] = []
        self._busy = False
        self._prepare = handler.prepare_batch if isinstance(handler, PreparingHandler) else None

    async def run(self, deliveries: Sequence[Delivery]) -> bool:
        if not isinstance(self.handler, BatchHandler):
            return False
        if self._busy and self._prepare is not None:
            # This batch waits for the commit in progress: decode it meanwhile.
            try:
                self._prepare(deliveries)
            except Exception:
                # Only an optimisation: the batches are handled as well without it.
                log.exception("prepare_batch failed for group %s; no longer preparing", self.group)
                self._prepare = None
        if self._busy:
            turn: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
            entry = (deliveries, turn)
            self._waiting.append(entry)
            try:
                result = await turn
            except asyncio.CancelledError:
                if entry in self._waiting:
                    self._waiting.remove(entry)
                elif turn.done() and not turn.cancelled() and turn.result() is None:
                    self._hand_over()  # it was our turn to lead: pass it on
                raise
            if result is not None:
                return result
            # None: the previous round is over and this batch leads the next one.
        else:
            self._busy = True
        try:
            return await self._round(deliveries)
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        while self._waiting:
            _, turn = self._waiting.pop(0)
            if not turn.done():
                turn.set_result(None)
                return
        self._busy = False

    async def _round(self, own: Sequence[Delivery]) -> bool:
        joined, self._waiting = self._waiting, []
        try:
            together = [*own, *(d for deliveries, _ in joined for d in deliveries)]
            # Even a single message goes through handle_batch here, so that whatever arrives
            # on other partitions meanwhile joins the next commit instead of waiting for it.
            if await run_batch(self.handler, together, self.topology, self.group, minimum=1):
                for _, turn in joined:
                    _resolve(turn, True)
                return True
            if not joined:
                return False
            # Something in the combined batch failed: each partition's batch on its own.
            for deliveries, turn in joined:
                _resolve(turn, await run_batch(self.handler, deliveries, self.topology, self.group))
            return await run_batch(self.handler, own, self.topology, self.group)
        finally:
            for _, turn in joined:
                _resolve(turn, False)  # cancelled meanwhile: the others go one by one


def _resolve(turn: asyncio.Future[bool | None], result: bool) -> None:
    if not turn.done():
        turn.set_result(result)
