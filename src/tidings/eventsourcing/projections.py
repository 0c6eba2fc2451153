"""Projections: read models built from the event log, checkpointed with their own changes.

A :class:`Projection` declares its read-model tables and handles events into them::

    class Balances(Projection):
        name = "balances"
        types = (Deposited, Withdrawn)            # optional filter (classes or type names)

        def define_tables(self, metadata, suffix):
            return {"balances": Table(f"balances{suffix}", metadata, Column(...), ...)}

        def handle(self, envelope, conn, tables):
            conn.execute(...)                     # a plain SQLAlchemy Connection

A :class:`ProjectionRunner` reads the store's gap-safe log page by page. Each page's read-model
changes and the new checkpoint commit in *one* transaction, so a crash never applies an event
twice or skips one. It catches up from wherever its checkpoint is (a new projection starts at
the beginning of the log, or at ``start=`` for one that only needs what happens from then on),
then follows live.

**Rebuild without a half-built model.** Read-model tables are versioned by *generation*
(``balances_g1``, ``balances_g2``, ...). One row per (projection, generation) in the projections
table holds the checkpoint; the row marked ``active`` is the pointer readers follow
(:meth:`ProjectionRunner.read_model`). A rebuild fills a fresh generation from the start of the
log while readers keep using the active one; once it has caught up, the last events are applied
and the pointer flips in a single transaction, and only then is the old generation dropped.

Handlers are synchronous functions of a ``Connection``; the asyncio runner runs the very same
steps through ``AsyncConnection.run_sync``, so there is one implementation.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, MetaData, Table, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.core.codec import Codec, default_codec
from tidings.core.envelope import Envelope
from tidings.errors import ConfigurationError
from tidings.eventsourcing import plans
from tidings.eventsourcing.execution import run
from tidings.eventsourcing.tables import EventStoreSchema, default_schema
from tidings.persistence.log import START, Checkpoint, after
from tidings.persistence.values import as_utc

ReadModel = dict[str, Table]


class Projection:
    """Base class of projections (see the module docstring)."""

    name: ClassVar[str] = ""
    #: Only these event types (classes or stored names) are read; None means every event.
    types: ClassVar[tuple[str | type, ...] | None] = None
    #: Only streams whose id starts with this prefix.
    stream_prefix: ClassVar[str | None] = None

    def define_tables(self, metadata: MetaData, suffix: str) -> ReadModel:
        """Declare the read-model tables on ``metadata``, each name ending with ``suffix``."""
        raise ConfigurationError(f"{type(self).__qualname__} must implement define_tables()")

    def handle(self, envelope: Envelope[Any], conn: Connection, tables: ReadModel) -> None:
        """Apply one event to the read model (inside the checkpoint's transaction)."""
        raise ConfigurationError(f"{type(self).__qualname__} must implement handle()")

    def handle_page(
        self, envelopes: list[Envelope[Any]], conn: Connection, tables: ReadModel
    ) -> None:
        """Apply a page of events, in log order. Override to apply them set-wise (one
        ``executemany`` per statement instead of a statement per event): the page commits as
        one transaction with the checkpoint either way."""
        for envelope in envelopes:
            self.handle(envelope, conn, tables)


@dataclass(frozen=True, slots=True)
class Progress:
    """Reported after each page: events done so far, of about ``total``, rate and ETA."""

    done: int
    total: int
    elapsed: float
    rate: float
    eta: float | None


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    name: str
    generation: int
    checkpoint: str
    events_done: int
    behind: int
    updated_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[Progress], None]


def _now() -> datetime:
    return datetime.now(UTC)


class ProjectionRunner:
    """Runs one projection against one event store database (synchronous)."""

    def __init__(
        self,
        engine: Engine,
        projection: Projection,
        *,
        schema: EventStoreSchema | None = None,
        codec: Codec | None = None,
        page_size: int = 1000,
        start: Checkpoint = START,
    ) -> None:
        if not projection.name:
            raise ConfigurationError(f"{type(projection).__qualname__} needs a `name`")
        if page_size < 1:
            raise ConfigurationError("page_size must be at least 1")
        self.engine = engine
        self.projection = projection
        self.schema = schema if schema is not None else default_schema
        self.codec = codec if codec is not None else default_codec
        self.page_size = page_size
        #: Where a new generation starts reading (the log's start, or a later checkpoint for a
        #: read model that only cares about what happens from now on).
        self.start = start
        self._models: dict[int, tuple[MetaData, ReadModel]] = {}
        self._started = False
        self._filters = plans.type_names(projection.types)

    # -- generations -------------------------------------------------------------------------

    def _model(self, generation: int) -> tuple[MetaData, ReadModel]:
        found = self._models.get(generation)
        if found is None:
            metadata = MetaData()
            tables = self.projection.define_tables(metadata, f"_g{generation}")
            found = self._models[generation] = (metadata, tables)
        return found

    def _active_generation(self, conn: Connection) -> int:
        table = self.schema.projections
        generation = conn.execute(
            select(table.c.generation).where(
                table.c.name == self.projection.name, table.c.active.is_(True)
            )
        ).scalar()
        if generation is None:
            raise ConfigurationError(
                f"projection {self.projection.name!r} has no active generation"
            )
        return int(generation)

    def _start_if_needed(self, conn: Connection) -> int:
        """Create generation 1 (checkpoint row and tables) unless some generation is active.

        Several runners may start at once: the checkpoint row is inserted *before* the tables
        are created, so a concurrent starter waits on that row's key and fails with a unique
        violation once the winner commits; the callers then retry and find it ready.
        """
        table = self.schema.projections
        active = conn.execute(
            select(table.c.generation).where(
                table.c.name == self.projection.name, table.c.active.is_(True)
            )
        ).scalar()
        if active is None:
            self._start_generation(conn, 1, active=True)
            return 1
        return int(active)

    def _ensure_started(self) -> None:
        if self._started:
            return
        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    self._start_if_needed(conn)
                self._started = True
                return
            except IntegrityError:
                if attempt:
                    raise

    def _start_generation(self, conn: Connection, generation: int, *, active: bool) -> None:
        conn.execute(
            insert(self.schema.projections).values(
                name=self.projection.name,
                generation=generation,
                tx=self.start.tx,
                position=self.start.position,
                events_done=0,
                active=active,
                updated_at=_now(),
            )
        )
        metadata, _ = self._model(generation)
        metadata.drop_all(conn)
        metadata.create_all(conn)

    def read_model(self, conn: Connection) -> ReadModel:
        """The tables of the active generation: what readers should query (in ``conn``'s
        transaction, so the pointer and the data they read agree)."""
        self._ensure_started()
        return self._tables_in(conn)

    def _tables_in(self, conn: Connection) -> ReadModel:
        return self._model(self._active_generation(conn))[1]

    # -- catching up -------------------------------------------------------------------------

    def _step(self, conn: Connection, generation: int) -> int:
        """Handle one page for ``generation`` and move its checkpoint, in ``conn``'s
        transaction. Returns how many events were read."""
        table = self.schema.projections
        key = (table.c.name == self.projection.name) & (table.c.generation == generation)
        row = conn.execute(
            select(table.c.tx, table.c.position).where(key).with_for_update()
        ).one_or_none()
        if row is None:
            raise ConfigurationError(
                f"projection {self.projection.name!r} has no generation {generation}"
            )
        envelopes, next_checkpoint = run(
            conn,
            plans.read_log_decoded(
                self.schema,
                conn.dialect.name,
                Checkpoint(int(row.tx), int(row.position)),
                self.codec,
                limit=self.page_size,
                types=self._filters,
                stream_prefix=self.projection.stream_prefix,
            ),
        )
        if not envelopes:
            return 0
        tables = self._model(generation)[1]
        self.projection.handle_page(envelopes, conn, tables)
        conn.execute(
            update(table)
            .where(key)
            .values(
                tx=next_checkpoint.tx,
                position=next_checkpoint.position,
                events_done=table.c.events_done + len(envelopes),
                updated_at=_now(),
            )
        )
        return len(envelopes)

    def _catch_up(
        self,
        generation: int | None,
        progress: ProgressCallback | None,
        total: int,
        started: float | None = None,
    ) -> int:
        done = 0
        started = started if started is not None else time.monotonic()
        while True:
            with self.engine.begin() as conn:
                target = generation if generation is not None else self._active_generation(conn)
                count = self._step(conn, target)
            done += count
            if progress is not None and count:
                progress(_progress(done, max(total, done), started))
            if count < self.page_size:
                return done

    def catch_up(self, progress: ProgressCallback | None = None) -> int:
        """Handle every committed event after the checkpoint; returns how many."""
        self._ensure_started()
        total = self.status().behind if progress is not None else 0
        return self._catch_up(None, progress, total)

    def follow(self, stop: threading.Event, *, interval: float = 0.5) -> int:
        """Catch up, then keep following the live log until ``stop`` is set."""
        self._ensure_started()
        done = 0
        while not stop.is_set():
            done += self._catch_up(None, None, 0)
            stop.wait(interval)
        return done

    def rebuild(self, progress: ProgressCallback | None = None, *, keep_old: bool = False) -> int:
        """Rebuild into a fresh generation, switch readers over when caught up; returns the
        number of events the new generation handled."""
        table = self.schema.projections
        started = time.monotonic()
        self._ensure_started()
        with self.engine.begin() as conn:
            newest = conn.execute(
                select(func.max(table.c.generation)).where(table.c.name == self.projection.name)
            ).scalar_one()
            generation = int(newest) + 1
            self._start_generation(conn, generation, active=False)
        total = self._behind(self.start)
        done = self._catch_up(generation, progress, total, started)
        with self.engine.begin() as conn:
            # The final pages and the switch share one transaction: readers go from the old,
            # complete model straight to the new, complete one.
            while True:
                count = self._step(conn, generation)
                done += count
                if count < self.page_size:
                    break
            old = self._active_generation(conn)
            conn.execute(
                update(table).where(table.c.name == self.projection.name).values(active=False)
            )
            conn.execute(
                update(table)
                .where((table.c.name == self.projection.name) & (table.c.generation == generation))
                .values(active=True, updated_at=_now())
            )
        if not keep_old:
            with self.engine.begin() as conn:
                self._model(old)[0].drop_all(conn)
                conn.execute(
                    table.delete().where(
                        (table.c.name == self.projection.name) & (table.c.generation == old)
                    )
                )
        if progress is not None:
            progress(_progress(done, done, started))
        return done

    # -- status ------------------------------------------------------------------------------

    def _behind(self, checkpoint: Checkpoint) -> int:
        events = self.schema.events
        condition = after(events, checkpoint)
        if self._filters is not None:
            condition = condition & events.c.event_type.in_(self._filters)
        if self.projection.stream_prefix:
            condition = condition & events.c.stream_id.startswith(
                self.projection.stream_prefix, autoescape=True
            )
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(condition)).scalar_one())

    def status(self) -> ProjectionStatus:
        table = self.schema.projections
        self._ensure_started()
        with self.engine.begin() as conn:
            generation = self._active_generation(conn)
            row = conn.execute(
                select(table).where(
                    (table.c.name == self.projection.name) & (table.c.generation == generation)
                )
            ).one()
        checkpoint = Checkpoint(int(row.tx), int(row.position))
        return ProjectionStatus(
            name=self.projection.name,
            generation=generation,
            checkpoint=str(checkpoint),
            events_done=int(row.events_done),
            behind=self._behind(checkpoint),
            updated_at=as_utc(row.updated_at).isoformat() if row.updated_at else None,
        )


def _progress(done: int, total: int, started: float) -> Progress:
    elapsed = max(time.monotonic() - started, 1e-9)
    rate = done / elapsed
    remaining = max(total - done, 0)
    return Progress(done, total, elapsed, rate, remaining / rate if rate > 0 else None)


class AsyncProjectionRunner:
    """asyncio front for a projection: each step runs the synchronous one via ``run_sync``."""

    def __init__(
        self,
        engine: AsyncEngine,
        projection: Projection,
        *,
        schema: EventStoreSchema | None = None,
        codec: Codec | None = None,
        page_size: int = 1000,
    ) -> None:
        self.engine = engine
        self._sync = ProjectionRunner(
            engine.sync_engine, projection, schema=schema, codec=codec, page_size=page_size
        )

    async def _ensure_started(self) -> None:
        if self._sync._started:
            return
        for attempt in range(2):
            try:
                await self._in_transaction(self._sync._start_if_needed)
                self._sync._started = True
                return
            except IntegrityError:
                if attempt:
                    raise

    async def _in_transaction(self, fn: Callable[[Connection], int]) -> int:
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn)

    async def catch_up(self) -> int:
        runner = self._sync
        await self._ensure_started()
        done = 0
        while True:
            count = await self._in_transaction(
                lambda conn: runner._step(conn, runner._active_generation(conn))
            )
            done += count
            if count < runner.page_size:
                return done

    async def follow(self, stop: asyncio.Event, *, interval: float = 0.5) -> int:
        done = 0
        while not stop.is_set():
            done += await self.catch_up()
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
        return done

    async def read_model(self, conn: Any) -> ReadModel:
        """The active generation's tables (``conn`` is an ``AsyncConnection``)."""
        await self._ensure_started()
        result: ReadModel = await conn.run_sync(self._sync._tables_in)
        return result


@dataclass
class Projections:
    """An application's projections and where they live: what ``--app`` points the CLI at."""

    engine: Engine
    projections: list[Projection]
    schema: EventStoreSchema | None = None
    codec: Codec | None = None
    page_size: int = 1000

    def names(self) -> list[str]:
        return [p.name for p in self.projections]

    def runner(self, name: str) -> ProjectionRunner:
        for projection in self.projections:
            if projection.name == name:
                return ProjectionRunner(
                    self.engine,
                    projection,
                    schema=self.schema,
                    codec=self.codec,
                    page_size=self.page_size,
                )
        raise ConfigurationError(
            f"no projection named {name!r}; known: {', '.join(self.names()) or '(none)'}"
        )
