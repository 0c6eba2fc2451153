"""Event sourcing inside a unit of work: the commit participant and the repositories.

:class:`EventStoreParticipant` joins a :class:`~tidings.persistence.sql.SqlUnitOfWork` (or its
asyncio twin): at persist time it appends the pending events of every
:class:`~tidings.core.aggregate.EventSourcedAggregate` in the batch, each stream with the expected
version it had before its pending events, plus any snapshot the policy makes due, all in the
unit of work's transaction. A concurrent writer makes the commit fail with
:class:`~tidings.errors.ConcurrencyError` and everything rolls back.

The repositories load aggregates through the unit of work's own session (so reads see the same
transaction) and track them, so their new events commit with everything else::

    participant = EventStoreParticipant()
    uow = SqlUnitOfWork(engine, handlers, participants=[participant])
    with uow:
        accounts = EventSourcedRepository(uow, participant)
        account = accounts.load(Account, account_id)
        account.deposit(Decimal(10))
        uow.commit()

Historical loads (``at_version=``, ``as_of=``) are read-only views and are *not* tracked.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable

from tidings.core.aggregate import Aggregate, EventSourcedAggregate, identity
from tidings.core.codec import Codec, default_codec
from tidings.core.commit import CommitBatch
from tidings.errors import ConfigurationError, TidingsError
from tidings.eventsourcing import plans
from tidings.eventsourcing.cache import DEFAULT, AggregateCache, cache_option
from tidings.eventsourcing.execution import Params, Plan, conflict_among, run, run_async
from tidings.eventsourcing.snapshots import SnapshotPolicy
from tidings.eventsourcing.tables import EventStoreSchema, default_schema
from tidings.persistence.direct import Direct
from tidings.persistence.sql import AsyncSqlUnitOfWork, SqlUnitOfWork

A = TypeVar("A", bound=EventSourcedAggregate)


class EventStoreParticipant:
    """Appends event-sourced aggregates' pending events in the unit of work's transaction.

    ``cache``: the :class:`~tidings.eventsourcing.cache.AggregateCache` the repositories load
    from (a private one of the default size unless given; None for none). It gets a copy of
    every event-sourced aggregate of a unit of work that committed.
    """

    def __init__(
        self,
        schema: EventStoreSchema | None = None,
        *,
        codec: Codec | None = None,
        snapshots: SnapshotPolicy | None = None,
        cache: AggregateCache | None = DEFAULT,
    ) -> None:
        self.schema = schema if schema is not None else default_schema
        self.codec = codec if codec is not None else default_codec
        self.snapshots = snapshots
        self.cache = cache_option(cache)
        self._appends: ContextVar[tuple[tuple[str, int], ...]] = ContextVar(
            f"tidings_appends_{id(self)}", default=()
        )

    def statements(self, batch: CommitBatch) -> Iterable[tuple[Executable | Direct, Params]]:
        queries = plans.append_batch(self.schema, self.codec, batch, self.snapshots)
        # Remembered for translate(), which runs in the same context if the commit fails.
        self._appends.set(tuple(q.conflict for q in queries if q.conflict is not None))
        return [
            (Direct(query.statement) if query.direct else query.statement, query.params)
            for query in queries
        ]

    def translate(self, error: DBAPIError) -> TidingsError | None:
        return conflict_among(error, self.schema.events.name, self._appends.get())

    def after_commit(self, batch: CommitBatch) -> None:
        if self.cache is not None:
            self.cache.keep(batch.aggregates)


def _tracked(aggregates: Iterable[Aggregate], cls: type[A], id: Any) -> A | None:
    for aggregate in aggregates:
        if type(aggregate) is cls and identity(aggregate) == id:
            return aggregate
    return None


def _check_class(cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, EventSourcedAggregate)):
        raise ConfigurationError(f"{cls!r} is not an EventSourcedAggregate subclass")


class _Repository:
    """What the sync and async repositories share; only running the load plan differs."""

    uow: SqlUnitOfWork | AsyncSqlUnitOfWork

    def __init__(
        self, uow: SqlUnitOfWork | AsyncSqlUnitOfWork, participant: EventStoreParticipant
    ) -> None:
        self.uow = uow
        self.participant = participant

    def _tracked_current(
        self, cls: type[A], id: Any, at_version: int | None, as_of: datetime | None
    ) -> A | None:
        """The aggregate already in the unit of work (current state only), or None."""
        _check_class(cls)
        self.uow._require_active()
        if at_version is None and as_of is None:
            return _tracked(self.uow.aggregates(), cls, id)
        return None

    def _plan(
        self, cls: type[A], id: Any, at_version: int | None, as_of: datetime | None
    ) -> Plan[A] | A:
        p = self.participant
        return plans.load_through(
            p.cache,
            p.schema,
            p.codec,
            cls,
            id,
            at_version=at_version,
            as_of=as_of,
            use_snapshots=p.snapshots is not None,
        )

    def _loaded(self, aggregate: A, at_version: int | None, as_of: datetime | None) -> A:
        historical = at_version is not None or as_of is not None
        if historical:
            return aggregate
        if self.participant.cache is not None:
            self.participant.cache.loaded(aggregate)
        return self.uow.track(aggregate)

    def add(self, aggregate: A) -> A:
        """Track a new aggregate: its events are appended when the unit of work commits."""
        _check_class(type(aggregate))
        return self.uow.track(aggregate)


class EventSourcedRepository(_Repository):
    """Loads and adds event-sourced aggregates through a synchronous SQL unit of work."""

    uow: SqlUnitOfWork

    def __init__(self, uow: SqlUnitOfWork, participant: EventStoreParticipant) -> None:
        super().__init__(uow, participant)

    def load(
        self,
        cls: type[A],
        id: Any,
        *,
        at_version: int | None = None,
        as_of: datetime | None = None,
    ) -> A:
        """The aggregate (tracked by the unit of work), or its read-only state at a version or
        moment. Raises :class:`~tidings.errors.StreamNotFound` if it was never stored."""
        found = self._tracked_current(cls, id, at_version, as_of)
        if found is not None:
            return found
        plan = self._plan(cls, id, at_version, as_of)
        if isinstance(plan, EventSourcedAggregate):
            return self._loaded(plan, at_version, as_of)
        connection = self.uow.connection_for(self.participant.schema.events)
        # Outside the transaction if none has begun: stored events never change, and the
        # append is checked by the constraints; a unit of work that then writes one statement
        # needs no transaction round trips at all.
        return self._loaded(run(connection, plan, autocommit=True), at_version, as_of)


class AsyncEventSourcedRepository(_Repository):
    """The asyncio twin of :class:`EventSourcedRepository` (the same load plan)."""

    uow: AsyncSqlUnitOfWork

    def __init__(self, uow: AsyncSqlUnitOfWork, participant: EventStoreParticipant) -> None:
        super().__init__(uow, participant)

    async def load(
        self,
        cls: type[A],
        id: Any,
        *,
        at_version: int | None = None,
        as_of: datetime | None = None,
    ) -> A:
        found = self._tracked_current(cls, id, at_version, as_of)
        if found is not None:
            return found
        plan = self._plan(cls, id, at_version, as_of)
        if isinstance(plan, EventSourcedAggregate):
            return self._loaded(plan, at_version, as_of)
        return self._loaded(await run_async(self.uow.session, plan), at_version, as_of)
