"""The subscriber side of delivery: who handles what, and the rows that record it.

* :class:`Subscriber`: one after-commit subscriber (its handlers and failure policy);
  :class:`Invoker` runs its handlers for one event with a :class:`~tidings.HandlerContext`
  carrying the unit of work and the stable delivery id;
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
from typing import Any
from uuid import UUID

from sqlalchemy import create_engine, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from tidings.core.dispatch import HandlerContext, Subscription
from tidings.core.envelope import Envelope, caused_by, restore, system_clock
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


def delivery_id(subscriber: str, stored: StoredEvent) -> str:
    """Stable across redeliveries and replays: an idempotency key for external systems."""
    return f"{subscriber}:{stored.event_id}"


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


class Subscriber:
    """One after-commit subscriber: its handlers and its failure policy."""

    def __init__(
        self, name: str, subscriptions: Sequence[Subscription], policy: SubscriberPolicy
    ) -> None:
        self.name = name
        self.subscriptions = tuple(subscriptions)
        self.policy = policy
        self._cache: dict[type, tuple[Subscription, ...]] = {}

    def handlers_for(self, cls: type) -> tuple[Subscription, ...]:
        found = self._cache.get(cls)
        if found is None:
            found = self._cache[cls] = tuple(s for s in self.subscriptions if s.matches(cls))
        return found


@dataclass
class Item:
    """One log row of the partition being delivered, decoded if possible."""

    checkpoint: Checkpoint
    stored: StoredEvent
    envelope: Envelope[Any] | None
    error: CodecError | None


class Invoker:
    """Runs a subscriber's handlers for one envelope (async handlers on a private loop)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(
        self, subscriber: Subscriber, envelope: Envelope[Any], uow: SqlUnitOfWork, attempt: int
    ) -> None:
        context = HandlerContext(
            envelope=envelope,
            uow=uow,
            delivery_id=f"{subscriber.name}:{envelope.event_id}",
            subscriber=subscriber.name,
            attempt=attempt,
        )
        token = caused_by(envelope)
        try:
            for subscription in subscriber.handlers_for(type(envelope.event)):
                if subscription.wants_context:
                    result = subscription.handler(envelope.event, context)
                else:
                    result = subscription.handler(envelope.event)
                if result is not None and inspect.isawaitable(result):
                    if self._loop is None:
                        self._loop = asyncio.new_event_loop()
                    self._loop.run_until_complete(result)
        finally:
            restore(token)

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
    """
    database = engine.url.database
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
