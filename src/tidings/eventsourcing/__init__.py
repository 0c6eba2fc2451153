"""Event sourcing on the tidings store: optimistic concurrency, snapshots, upcasting on read,
temporal queries and projections.

The events table is a gap-safe log (:mod:`tidings.persistence.log`), so the outbox relay and
projections follow it directly.
"""

from __future__ import annotations

from tidings.eventsourcing.cache import AggregateCache
from tidings.eventsourcing.projections import (
    AsyncProjectionRunner,
    Progress,
    Projection,
    ProjectionRunner,
    Projections,
    ProjectionStatus,
)
from tidings.eventsourcing.records import LogEntry, LogPage
from tidings.eventsourcing.repository import (
    AsyncEventSourcedRepository,
    EventSourcedRepository,
    EventStoreParticipant,
)
from tidings.eventsourcing.snapshots import SnapshotIgnored, SnapshotPolicy, SupportsSnapshots
from tidings.eventsourcing.store import AsyncEventStore, EventStore
from tidings.eventsourcing.tables import EventStoreSchema, default_schema, metadata
from tidings.persistence.log import START, Checkpoint

__all__ = [
    "START",
    "AggregateCache",
    "AsyncEventSourcedRepository",
    "AsyncEventStore",
    "AsyncProjectionRunner",
    "Checkpoint",
    "EventSourcedRepository",
    "EventStore",
    "EventStoreParticipant",
    "EventStoreSchema",
    "LogEntry",
    "LogPage",
    "Progress",
    "Projection",
    "ProjectionRunner",
    "ProjectionStatus",
    "Projections",
    "SnapshotIgnored",
    "SnapshotPolicy",
    "SupportsSnapshots",
    "default_schema",
    "metadata",
]
