"""How an application wires after-commit delivery: one :class:`RelayConfig` object.

The same object serves the writers (``config.unit_of_work()`` gives a unit of work that writes
outbox rows) and the relay (``tidings relay --app module:attr`` points at it)::

    config = RelayConfig(engine, handlers, policies={"billing": SubscriberPolicy(
        retry=RetryPolicy(immediate=1, delayed=3), on_failure=OnFailure.PARK)})

    with config.unit_of_work() as uow:
        uow.add(Order.start(...))
        uow.commit()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Engine

from tidings.core.codec import Codec, default_codec
from tidings.core.dispatch import Handlers
from tidings.core.envelope import Envelope
from tidings.errors import ConfigurationError
from tidings.outbox import tables
from tidings.outbox.participant import Doorbell, OutboxParticipant
from tidings.outbox.retry import SubscriberPolicy
from tidings.persistence.sql import CommitParticipant, SqlUnitOfWork


@dataclass
class RelayConfig:
    """Everything a relay (and the writers feeding it) needs to know."""

    engine: Engine
    handlers: Handlers
    #: The log followed: the outbox, or any table with the same columns (an event store's
    #: events table), which then *is* the outbox with no double write.
    log: Table = tables.outbox
    codec: Codec = field(default_factory=lambda: default_codec)
    #: Streams are spread over this many partitions per subscriber by a stable hash of the
    #: stream id; each partition has its own checkpoint and lease, so partitions are processed
    #: in parallel (by several relay processes) while each stream stays in order.
    partitions: int = 4
    batch_size: int = 200
    #: While the relay handles a full page of a partition, read and decode the next page in a
    #: thread of its own, so that a catch-up overlaps the database read with the handlers (a
    #: bus forwarder's wait for the broker's confirmations). Off on an in-memory SQLite
    #: database, which other threads cannot read.
    read_ahead: bool = True
    default_policy: SubscriberPolicy = field(default_factory=SubscriberPolicy)
    policies: Mapping[str, SubscriberPolicy] = field(default_factory=dict)
    #: Only these subscribers (by name); None means every after-commit subscriber.
    subscribers: Sequence[str] | None = None
    #: Builds the unit of work a subscriber's handler runs in. Default: a SqlUnitOfWork on
    #: ``engine`` with these handlers and the outbox participant (so events the subscriber's
    #: effects record are delivered in turn).
    unit_of_work_factory: Callable[[], SqlUnitOfWork] | None = None
    extra_participants: Sequence[CommitParticipant] = ()
    to_bus: Callable[[Envelope[Any]], bool] | None = None
    retention: timedelta = timedelta(days=7)
    retention_interval: float = 60.0
    lease_seconds: float = 15.0
    #: Idle polling: starts at ``min_poll_interval`` and doubles up to ``poll_interval``.
    min_poll_interval: float = 0.002
    poll_interval: float = 0.25
    #: Wake-up shared with writers in the same process (rung after each commit).
    doorbell: Doorbell = field(default_factory=Doorbell)
    #: On PostgreSQL, LISTEN for the writers' NOTIFY (polling stays as the fallback).
    listen: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.partitions, int) or not 1 <= self.partitions <= 1024:
            raise ConfigurationError(f"partitions must be an integer 1..1024: {self.partitions!r}")
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1: {self.batch_size!r}")
        if self.lease_seconds <= 0:
            raise ConfigurationError(f"lease_seconds must be > 0: {self.lease_seconds!r}")
        missing = {"position", "tx", "event_id", "payload", "headers"} - set(self.log.c.keys())
        if missing:
            raise ConfigurationError(
                f"table {self.log.name!r} cannot be followed: it lacks {sorted(missing)} "
                "(build it from log_columns() and tidings.outbox.tables.event_columns())"
            )
        known = set(self.handlers.subscribers())
        unknown = set(self.policies) - known
        if unknown:
            raise ConfigurationError(
                f"policies name unknown after-commit subscribers {sorted(unknown)}; "
                f"known: {sorted(known)}"
            )
        if self.subscribers is not None and set(self.subscribers) - known:
            raise ConfigurationError(
                f"subscribers= names unknown after-commit subscribers "
                f"{sorted(set(self.subscribers) - known)}; known: {sorted(known)}"
            )

    def policy(self, subscriber: str) -> SubscriberPolicy:
        return self.policies.get(subscriber, self.default_policy)

    def participant(self) -> OutboxParticipant:
        return OutboxParticipant.for_engine(
            self.engine,
            self.handlers,
            codec=self.codec,
            to_bus=self.to_bus,
            doorbell=self.doorbell,
        )

    def unit_of_work(self, **kwargs: Any) -> SqlUnitOfWork:
        """A unit of work whose commits write outbox rows (and wake a local relay)."""
        if self.unit_of_work_factory is not None and not kwargs:
            return self.unit_of_work_factory()
        return SqlUnitOfWork(
            self.engine,
            self.handlers,
            participants=[self.participant(), *self.extra_participants],
            **kwargs,
        )

    def subscriber_names(self) -> list[str]:
        names = list(self.handlers.subscribers())
        if self.subscribers is not None:
            names = [n for n in names if n in self.subscribers]
        return names
