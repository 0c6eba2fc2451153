"""The event store's tables: events (the ordered log), snapshots and projection checkpoints.

The events table is a *log table* in the sense of :mod:`tidings.persistence.log`: it has the
``position``/``tx`` ordering columns, the shared metadata columns
(:data:`tidings.core.messages.METADATA_FIELDS`), ``headers`` (JSON text) and ``payload`` (bytes).
So the outbox relay can follow it directly: the store's log *is* the outbox, nothing is written
twice.

Two database constraints carry optimistic concurrency, so it holds even for writers that bypass
this library's checks:

* ``UNIQUE (stream_id, stream_version)``: two writers cannot both store version N of a stream;
* a self-referencing foreign key from ``(stream_id, previous_version)`` to
  ``(stream_id, stream_version)``: version N+1 can only be stored if version N exists, so a
  stream never has holes (``previous_version`` is NULL for version 1, which the key skips).

Applications with their own ``MetaData`` (one Alembic history) pass it to
:class:`EventStoreSchema`; names can be prefixed to share a schema with other tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.persistence.log import install_tx_default, log_columns

DEFAULT_PREFIX = "tidings_"


class EventStoreSchema:
    """The SQLAlchemy tables of one event store."""

    def __init__(self, metadata: MetaData | None = None, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.metadata = metadata if metadata is not None else MetaData()
        self.prefix = prefix
        events_name = f"{prefix}events"
        self.events = Table(
            events_name,
            self.metadata,
            *log_columns(),
            Column("event_id", Uuid(), nullable=False, unique=True),
            Column("event_type", String(255), nullable=False),
            Column("event_version", Integer(), nullable=False),
            Column("stream_id", String(255), nullable=False),
            Column("stream_version", Integer(), nullable=False),
            Column("previous_version", Integer(), nullable=True),
            Column("occurred_at", DateTime(timezone=True), nullable=False),
            Column("correlation_id", Uuid(), nullable=False),
            Column("causation_id", Uuid(), nullable=True),
            Column("producer", String(255), nullable=True),
            Column("headers", Text(), nullable=False, server_default="{}"),
            Column("payload", LargeBinary(), nullable=False),
            UniqueConstraint("stream_id", "stream_version", name=f"{events_name}_stream_version"),
            ForeignKeyConstraint(
                ["stream_id", "previous_version"],
                [f"{events_name}.stream_id", f"{events_name}.stream_version"],
                name=f"{events_name}_no_gaps",
            ),
        )
        install_tx_default(self.events)
        Index(f"{events_name}_type", self.events.c.event_type, self.events.c.position)
        # Reads of the log (projections, subscribers, a relay following the store) go in
        # (tx, position) order from a checkpoint: without this index PostgreSQL scanned and
        # sorted the whole table for every page (4.3-5.2 ms a page at 50,000 events, growing with
        # the store), where the index seeks to the checkpoint. SQLite reads by position alone
        # (persistence.log.log_order), from the primary key: it would only pay for the index.
        Index(f"{events_name}_tx_position", self.events.c.tx, self.events.c.position).ddl_if(
            dialect="postgresql"
        )

        self.snapshots = Table(
            f"{prefix}snapshots",
            self.metadata,
            Column("stream_id", String(255), nullable=False),
            Column("stream_version", Integer(), nullable=False),
            Column("state_type", String(255), nullable=False),
            Column("state_version", Integer(), nullable=False),
            Column("state", LargeBinary(), nullable=False),
            Column("taken_at", DateTime(timezone=True), nullable=False),
            PrimaryKeyConstraint("stream_id", "stream_version"),
        )

        # One row per (projection, generation). The row marked ``active`` is the pointer readers
        # follow; a rebuild fills a new generation and flips the pointer in one transaction.
        self.projections = Table(
            f"{prefix}projections",
            self.metadata,
            Column("name", String(255), nullable=False),
            Column("generation", Integer(), nullable=False),
            Column("tx", BigInteger(), nullable=False),
            Column("position", BigInteger(), nullable=False),
            Column("events_done", Integer(), nullable=False, server_default="0"),
            Column("active", Boolean(), nullable=False),
            Column("updated_at", DateTime(timezone=True), nullable=False),
            PrimaryKeyConstraint("name", "generation"),
        )

    def create_all(self, engine: Engine) -> None:
        """Create the tables that do not exist yet (use Alembic in production)."""
        self.metadata.create_all(engine)

    async def create_all_async(self, engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            await conn.run_sync(self.metadata.create_all)


default_schema = EventStoreSchema()
"""The tables under their default names, on a ``MetaData`` of their own."""

metadata = default_schema.metadata
