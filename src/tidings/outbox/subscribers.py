"""The subscriber side of delivery: who handles what, and the rows that record it.

* :class:`Subscriber`: one after-commit subscriber (its handlers and failure policy);
  :class:`Invoker` runs its handlers for one event with a :class:`~tidings.HandlerContext`
  carrying the unit of work and the stable delivery id;
* :class:`BatchHandler`: a handler that can also take a whole relay batch at once (the bus
  forwarder: one confirmed publish for the batch instead of one per event);
* :func:`partition_of`: the stable hash that keeps each stream in one partition;
* :func:`ensure_checkpoints`: the (log, subscriber, partition) checkpoint and lease rows;
* :func:`dead_letter_values`: a dead-letter row, the raw event kept whole.
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from sqlalchemy import create_engine, insert, select
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import IntegrityError

from tidings.core.dispatch import HandlerContext, Subscription
from tidings.core.envelope import Envelope, caused_by, restore, system_clock
from tidings.core.ids import uuid_text
from tidings.core.messages import StoredEvent
from tidings.errors import CodecError, ConfigurationError
from tidings.outbox import tables
from tidings.outbox.config import RelayConfig
from tidings.outbox.retry import SubscriberPolicy
from tidings.persistence.log import Checkpoint
from tidings.persistence.sql import SqlUnitOfWork


def partition_of(stored: StoredEvent, partitions: int) -> int:
    """The partition of an event: a stable hash of its stream (of its id when it has none)."""
    return _partition(stored.stream_id, stored.event_id, partitions)


def _partition(stream_id: str | None, event_id: Any, partitions: int) -> int:
    key = stream_id if stream_id is not None else str(UUID(str(event_id)))
    return zlib.crc32(key.encode()) % partitions


def delivery_id(subscriber: str, stored: StoredEvent | Envelope[Any]) -> str:
    """Stable across redeliveries and replays: an idempotency key for external systems.

    The same for an event stored or decoded (only its id counts): handler contexts use it too."""
    return f"{subscriber}:{uuid_text(stored.event_id)}"


@dataclass(frozen=True)
class Failure:
    """One failed delivery attempt, as kept in a dead letter."""

    exception_type: str
    message: str
    traceback: str
    at: datetime

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        return cls(
            exception_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
            message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
            at=system_clock(),
        )


@runtime_checkable
class BatchHandler(Protocol):
    """An after-commit handler that can also handle a relay batch in one call.

    Register the object itself as the handler (``handlers.add(Type, obj, when=AFTER_COMMIT,
    name=...)``, for any number of types). When it is the subscriber's *only* handler, the relay
    calls :meth:`handle_batch` once per batch with one context per event of the batch (in log
    order, all sharing the batch's unit of work), then moves the checkpoint in that same
    transaction. ``__call__(event, ctx)`` is still used for a batch of one, for retries, and
    when :meth:`handle_batch` raised: the batch is then delivered again event by event, so the
    retry policy and the dead letters apply to the event that fails, as for any handler. A
    batch handler must therefore tolerate seeing the events of a failed batch again (at least
    once, as always after commit).

    No causation context is set around :meth:`handle_batch` (there is no single cause): a batch
    handler that records events should not rely on it.
    """

    def __call__(self, event: Any, ctx: HandlerContext, /) -> Any: ...

    def handle_batch(self, contexts: Sequence[HandlerContext], /) -> None: ...


class Subscriber:
    """One after-commit subscriber: its handlers and its failure policy."""

    def __init__(
        self, name: str, subscriptions: Sequence[Subscription], policy: SubscriberPolicy
    ) -> None:
        self.name = name
        self.subscriptions = tuple(subscriptions)
        self.policy = policy
        self._cache: dict[type, tuple[Subscription, ...]] = {}
        #: The subscriber's one batch-capable handler, if that is all it has.
        self.batch: BatchHandler | None = _batch_handler(self.subscriptions)

    def handlers_for(self, cls: type) -> tuple[Subscription, ...]:
        found = self._cache.get(cls)
        if found is None:
            found = self._cache[cls] = tuple(s for s in self.subscriptions if s.matches(cls))
        return found


def _batch_handler(subscriptions: Sequence[Subscription]) -> BatchHandler | None:
    # One object registered for several types is one handler; two different handlers would need
    # their per-event interleaving kept, which a batch call cannot express.
    handlers = {id(s.handler): s for s in subscriptions}
    if len(handlers) != 1:
        return None
    (only,) = handlers.values()
    if only.is_async or not only.wants_context or not isinstance(only.handler, BatchHandler):
        return None
    return only.handler


class Item:
    """One log row of the partition being delivered, decoded if possible.

    The raw :class:`StoredEvent` is built from ``row`` only when something needs it (a dead
    letter, a log line): on the delivery path the envelope is made from the row directly, which
    saves building (and validating) a second eleven-field object per event.
    """

    __slots__ = ("_stored", "checkpoint", "envelope", "error", "event_id", "row", "stream_id")

    def __init__(
        self,
        checkpoint: Checkpoint,
        row: Row[Any],
        envelope: Envelope[Any] | None,
        error: CodecError | None,
    ) -> None:
        self.checkpoint = checkpoint
        # The row as read (named columns): its mapping view is built only for a dead letter,
        # since making one costs a few microseconds per event on the delivery path.
        self.row = row
        self.envelope = envelope
        self.error = error
        self.stream_id: str | None
        self.event_id: Any
        if envelope is not None:
            self.stream_id, self.event_id = envelope.stream_id, envelope.event_id
        else:
            self.stream_id, self.event_id = row._mapping["stream_id"], row._mapping["event_id"]
        self._stored: StoredEvent | None = None

    @property
    def stored(self) -> StoredEvent:
        if self._stored is None:
            self._stored = tables.stored_from_row(self.row._mapping)
        return self._stored


class Invoker:
    """Runs a subscriber's handlers for one envelope (async handlers on a private loop)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(
        self, subscriber: Subscriber, envelope: Envelope[Any], uow: SqlUnitOfWork, attempt: int
    ) -> None:
        event = envelope.event
        # Built only for a handler that takes one: the delivery id's text alone is a UUID
        # formatted per event.
        context: HandlerContext | None = None
        token = caused_by(envelope)
        try:
            for subscription in subscriber.handlers_for(type(event)):
                if subscription.wants_context:
                    if context is None:
                        context = HandlerContext(
                            envelope=envelope,
                            uow=uow,
                            delivery_id=delivery_id(subscriber.name, envelope),
                            subscriber=subscriber.name,
                            attempt=attempt,
                        )
                    result = subscription.handler(event, context)
                else:
                    result = subscription.handler(event)
                if result is not None and inspect.isawaitable(result):
                    if self._loop is None:
                        self._loop = asyncio.new_event_loop()
                    self._loop.run_until_complete(result)
        finally:
            restore(token)

    def batch(
        self,
        subscriber: Subscriber,
        handler: BatchHandler,
        envelopes: Sequence[Envelope[Any]],
        uow: SqlUnitOfWork,
        attempt: int,
    ) -> None:
        """Hand ``envelopes`` to ``subscriber``'s batch handler in one call."""
        name = subscriber.name
        # Positional, in HandlerContext's field order (envelope, uow, delivery_id, subscriber,
        # attempt): one per event of the page, and keywords cost about a microsecond more.
        handler.handle_batch(
            [
                HandlerContext(envelope, uow, delivery_id(name, envelope), name, attempt)
                for envelope in envelopes
            ]
        )

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


def reader_engine(engine: Engine) -> Engine:
    """An engine for the follower's reads.

    tidings' SQLite engines begin every transaction with ``BEGIN IMMEDIATE`` (the write lock),
    reads included; a relay polling through such an engine would queue writers behind its
    reads. On a SQLite file the follower therefore reads through its own autocommit engine:
    each read sees the latest committed state (WAL) and takes no lock.

    On PostgreSQL the reads go through the same pool in autocommit (the engine's events, such
    as a ``search_path`` set on connect, still apply): each is one statement, and without it
    every poll would cost ``BEGIN``, the query and a ``ROLLBACK``, three round trips on the
    relay's wake-to-handler path instead of one.
    """
    database = engine.url.database
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return engine
    return create_engine(engine.url, isolation_level="AUTOCOMMIT")


def build_subscribers(config: RelayConfig) -> list[Subscriber]:
    by_name = config.handlers.subscribers()
    return [
        Subscriber(name, by_name[name], config.policy(name)) for name in config.subscriber_names()
    ]


def ensure_checkpoints(config: RelayConfig, subscriber: str) -> None:
    """Create the checkpoint and lease rows of ``subscriber``; refuse a changed partition count."""
    log = config.log.name
    cp = tables.checkpoints
    with config.engine.begin() as conn:
        existing = conn.execute(
            select(cp.c.partition, cp.c.partitions).where(
                cp.c.log == log, cp.c.subscriber == subscriber
            )
        ).all()
    # Rows may be missing (a relay died while creating them), but never of another count.
    counts = {int(row.partitions) for row in existing}
    if existing and counts != {config.partitions}:
        raise ConfigurationError(
            f"subscriber {subscriber!r} on {log!r} was set up with {sorted(counts)} partitions, "
            f"the relay is configured with {config.partitions}: checkpoints are per partition, "
            "so the count cannot change while a subscriber has a position"
        )
    have = {row.partition for row in existing}
    for partition in range(config.partitions):
        if partition in have:
            continue
        try:
            with config.engine.begin() as conn:
                conn.execute(
                    insert(cp).values(
                        log=log,
                        subscriber=subscriber,
                        partition=partition,
                        tx=0,
                        position=0,
                        partitions=config.partitions,
                    )
                )
                conn.execute(
                    insert(tables.leases).values(
                        log=log, subscriber=subscriber, partition=partition, expires_at=0.0
                    )
                )
        except IntegrityError:
            pass  # another relay created it at the same moment


def dead_letter_values(
    config: RelayConfig,
    subscriber: str,
    item: Item,
    *,
    status: str,
    reason: str,
    attempts: int,
    failures: Sequence[Failure],
) -> dict[str, Any]:
    """The dead-letter row of ``item``: the raw event untouched, plus what went wrong."""
    values = tables.row_from_stored(item.stored)
    last = failures[-1] if failures else None
    values.update(
        log=config.log.name,
        subscriber=subscriber,
        status=status,
        reason=reason,
        log_tx=item.checkpoint.tx,
        log_position=item.checkpoint.position,
        attempts=attempts,
        first_failure_at=failures[0].at if failures else None,
        last_failure_at=last.at if last else None,
        exception_type=last.exception_type if last else None,
        exception_message=last.message if last else None,
        traceback=last.traceback if last else None,
        dead_lettered_at=system_clock(),
    )
    return values
