"""Saga tables, as public SQLAlchemy metadata (include ``saga_metadata`` in your migrations)."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

saga_metadata = MetaData()

saga_instances = Table(
    "tidings_saga_instances",
    saga_metadata,
    Column("saga", String(200), primary_key=True),
    Column("key", String(400), primary_key=True),
    Column("state", LargeBinary, nullable=False),
    # Optimistic concurrency: every save must find the version it loaded.
    Column("version", Integer, nullable=False),
    Column("completed", Boolean, nullable=False, default=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# The dedup record: a message id handled by a saga is never handled by it again.
saga_processed = Table(
    "tidings_saga_processed",
    saga_metadata,
    Column("saga", String(200), primary_key=True),
    Column("message_id", String(64), primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False),
)

saga_timeouts = Table(
    "tidings_saga_timeouts",
    saga_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("saga", String(200), nullable=False),
    Column("key", String(400), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("message_type", String(200), nullable=False),
    Column("message_version", Integer, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Index("ix_tidings_saga_timeouts_due", "due_at"),
    Index("ix_tidings_saga_timeouts_instance", "saga", "key"),
)
