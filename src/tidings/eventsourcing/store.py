"""The event store's direct API, synchronous and asyncio: thin shells over :mod:`.plans`.

Each call runs in a transaction of its own. Inside a unit of work use the repositories of
:mod:`tidings.eventsourcing.repository` instead, so events commit with everything else.

::

    store = EventStore(engine)
    store.create_tables()
    store.append("Account-1", [Opened(owner="ann")], expected_version=0)
    store.read_stream("Account-1")                  # [LogEntry, ...]
    page = store.read_log(START, types=[Opened], stream_prefix="Account-")
    account = store.load(Account, 1, as_of=datetime(2026, 1, 1, tzinfo=UTC))
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.core.aggregate import EventSourcedAggregate
from tidings.core.codec import Codec, default_codec
from tidings.core.commit import CommitBatch
from tidings.errors import ConcurrencyError
from tidings.eventsourcing import plans
from tidings.eventsourcing.cache import DEFAULT, AggregateCache, cache_option
from tidings.eventsourcing.execution import Plan, run, run_async
from tidings.eventsourcing.records import LogEntry, LogPage
from tidings.eventsourcing.snapshots import SnapshotPolicy
from tidings.eventsourcing.tables import EventStoreSchema, default_schema
from tidings.persistence.log import START, Checkpoint
from tidings.persistence.sqlite import READ_ONLY

A = TypeVar("A", bound=EventSourcedAggregate)
T = TypeVar("T")


class _StoreConfig:
    def __init__(
        self,
        schema: EventStoreSchema | None,
        codec: Codec | None,
        snapshots: SnapshotPolicy | None,
        cache: AggregateCache | None,
    ) -> None:
        self.schema = schema if schema is not None else default_schema
        self.codec = codec if codec is not None else default_codec
        self.snapshots = snapshots
        self.cache = cache_option(cache)

    def _finish_save(self, batch: CommitBatch) -> None:
        batch.mark_committed()
        if self.cache is not None:
            self.cache.keep(batch.aggregates)

    def _load_plan(
        self,
        cls: type[A],
        id: Any,
        at_version: int | None,
        as_of: datetime | None,
        use_snapshots: bool,
        use_cache: bool,
    ) -> Plan[A] | A:
        return plans.load_through(
            self.cache if use_cache else None,
            self.schema,
            self.codec,
            cls,
            id,
            at_version=at_version,
            as_of=as_of,
            use_snapshots=use_snapshots,
        )

    def _loaded(self, aggregate: A, at_version: int | None, as_of: datetime | None) -> A:
        # The caller owns what it loaded; the cache keeps its own copy.
        if self.cache is not None and at_version is None and as_of is None:
            self.cache.loaded(aggregate)
        return aggregate

    def _forget(self, aggregates: Sequence[EventSourcedAggregate]) -> None:
        """After a failed save: the cache may hold what made it fail (a stale version)."""
        if self.cache is not None:
            for aggregate in aggregates:
                self.cache.discard(aggregate.stream_id)


class EventStore(_StoreConfig):
    """Synchronous event store on a SQLAlchemy :class:`~sqlalchemy.Engine`."""

    def __init__(
        self,
        engine: Engine,
        *,
        schema: EventStoreSchema | None = None,
        codec: Codec | None = None,
        snapshots: SnapshotPolicy | None = None,
        cache: AggregateCache | None = DEFAULT,
    ) -> None:
        super().__init__(schema, codec, snapshots, cache)
        self.engine = engine

    def create_tables(self) -> None:
        self.schema.create_all(self.engine)

    def _write(self, plan: Plan[T]) -> T:
        try:
            with self.engine.begin() as conn:
                return run(conn, plan)
        except ConcurrencyError as exc:
            if exc.actual_version is not None:
                raise
            # Detected by a constraint: the transaction is gone, so read the version now.
            actual = self.current_version(exc.stream_id)
            raise ConcurrencyError(exc.stream_id, exc.expected_version, actual) from exc

    def _read(self, plan: Plan[T]) -> T:
        # Each read as a statement of its own: no BEGIN and ROLLBACK round trips. The events
        # and snapshots a plan reads are only ever appended, so reading them in separate
        # statements sees nothing inconsistent.
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            return run(conn, plan, autocommit=True)

    def append(self, stream_id: str, events: Sequence[object], expected_version: int) -> int:
        """Append ``events`` atomically after ``expected_version`` (0: a new stream).

        Returns the new version. Raises :class:`ConcurrencyError` (nothing written) when the
        stream is not at ``expected_version``.
        """
        return self._write(
            plans.append(self.schema, self.codec, stream_id, events, expected_version)
        )

    def save(self, *aggregates: EventSourcedAggregate) -> CommitBatch:
        """Append every pending event of ``aggregates`` in one transaction (with snapshots)."""
        try:
            batch = self._write(plans.save(self.schema, self.codec, aggregates, self.snapshots))
        except BaseException:
            self._forget(aggregates)
            raise
        self._finish_save(batch)
        return batch

    def current_version(self, stream_id: str) -> int:
        return self._read(plans.current_version(self.schema, stream_id))

    def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int | None = None,
        to_version: int | None = None,
        backward: bool = False,
        limit: int | None = None,
    ) -> list[LogEntry]:
        return self._read(
            plans.read_stream(
                self.schema,
                stream_id,
                from_version=from_version,
                to_version=to_version,
                backward=backward,
                limit=limit,
            )
        )

    def read_log(
        self,
        after: Checkpoint = START,
        *,
        limit: int = 1000,
        types: Iterable[str | type] | None = None,
        stream_prefix: str | None = None,
        stream_id: str | None = None,
    ) -> LogPage:
        """One page of the global log after ``after``: committed events only, in log order."""
        return self._read(
            plans.read_log(
                self.schema,
                self.engine.dialect.name,
                after,
                limit=limit,
                types=types,
                stream_prefix=stream_prefix,
                stream_id=stream_id,
            )
        )

    def iter_log(
        self,
        after: Checkpoint = START,
        *,
        page_size: int = 1000,
        types: Iterable[str | type] | None = None,
        stream_prefix: str | None = None,
    ) -> Iterator[LogEntry]:
        """Every committed event after ``after``, page by page, until the end of the log."""
        filters = list(types) if types is not None else None
        while True:
            page = self.read_log(after, limit=page_size, types=filters, stream_prefix=stream_prefix)
            yield from page.entries
            if len(page) < page_size:
                return
            after = page.next

    def load(
        self,
        cls: type[A],
        id: Any,
        *,
        at_version: int | None = None,
        as_of: datetime | None = None,
        use_snapshots: bool = True,
        use_cache: bool = True,
    ) -> A:
        """The aggregate now, at a stream version, or as of a moment.

        ``use_snapshots=False`` and ``use_cache=False`` replay the whole stream."""
        plan = self._load_plan(cls, id, at_version, as_of, use_snapshots, use_cache)
        loaded = plan if isinstance(plan, EventSourcedAggregate) else self._read(plan)
        return self._loaded(loaded, at_version, as_of)


class AsyncEventStore(_StoreConfig):
    """asyncio event store on an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (same plans)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        schema: EventStoreSchema | None = None,
        codec: Codec | None = None,
        snapshots: SnapshotPolicy | None = None,
        cache: AggregateCache | None = DEFAULT,
    ) -> None:
        super().__init__(schema, codec, snapshots, cache)
        self.engine = engine

    async def create_tables(self) -> None:
        await self.schema.create_all_async(self.engine)

    async def _write(self, plan: Plan[T]) -> T:
        try:
            async with self.engine.begin() as conn:
                return await run_async(conn, plan)
        except ConcurrencyError as exc:
            if exc.actual_version is not None:
                raise
            actual = await self.current_version(exc.stream_id)
            raise ConcurrencyError(exc.stream_id, exc.expected_version, actual) from exc

    async def _read(self, plan: Plan[T]) -> T:
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            return await run_async(conn, plan)

    async def append(self, stream_id: str, events: Sequence[object], expected_version: int) -> int:
        return await self._write(
            plans.append(self.schema, self.codec, stream_id, events, expected_version)
        )

    async def save(self, *aggregates: EventSourcedAggregate) -> CommitBatch:
        try:
            batch = await self._write(
                plans.save(self.schema, self.codec, aggregates, self.snapshots)
            )
        except BaseException:
            self._forget(aggregates)
            raise
        self._finish_save(batch)
        return batch

    async def current_version(self, stream_id: str) -> int:
        return await self._read(plans.current_version(self.schema, stream_id))

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int | None = None,
        to_version: int | None = None,
        backward: bool = False,
        limit: int | None = None,
    ) -> list[LogEntry]:
        return await self._read(
            plans.read_stream(
                self.schema,
                stream_id,
                from_version=from_version,
                to_version=to_version,
                backward=backward,
                limit=limit,
            )
        )

    async def read_log(
        self,
        after: Checkpoint = START,
        *,
        limit: int = 1000,
        types: Iterable[str | type] | None = None,
        stream_prefix: str | None = None,
        stream_id: str | None = None,
    ) -> LogPage:
        return await self._read(
            plans.read_log(
                self.schema,
                self.engine.dialect.name,
                after,
                limit=limit,
                types=types,
                stream_prefix=stream_prefix,
                stream_id=stream_id,
            )
        )

    async def iter_log(
        self,
        after: Checkpoint = START,
        *,
        page_size: int = 1000,
        types: Iterable[str | type] | None = None,
        stream_prefix: str | None = None,
    ) -> AsyncIterator[LogEntry]:
        filters = list(types) if types is not None else None
        while True:
            page = await self.read_log(
                after, limit=page_size, types=filters, stream_prefix=stream_prefix
            )
            for entry in page.entries:
                yield entry
            if len(page) < page_size:
                return
            after = page.next

    async def load(
        self,
        cls: type[A],
        id: Any,
        *,
        at_version: int | None = None,
        as_of: datetime | None = None,
        use_snapshots: bool = True,
        use_cache: bool = True,
    ) -> A:
        plan = self._load_plan(cls, id, at_version, as_of, use_snapshots, use_cache)
        loaded = plan if isinstance(plan, EventSourcedAggregate) else await self._read(plan)
        return self._loaded(loaded, at_version, as_of)
