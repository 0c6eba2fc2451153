"""What the event store does, written once with no I/O (see :mod:`.execution`).

Each function returns a plan; :class:`~tidings.eventsourcing.store.EventStore`,
:class:`~tidings.eventsourcing.store.AsyncEventStore` and the unit-of-work repositories run the
same plans.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Integer, Select, and_, bindparam, false, func, insert, or_, select

from tidings.core.aggregate import EventSourcedAggregate
from tidings.core.codec import Codec
from tidings.core.commit import CommitBatch
from tidings.core.envelope import Envelope
from tidings.core.events import is_event_class, spec_of
from tidings.errors import ConcurrencyError, StreamNotFound
from tidings.eventsourcing.cache import AggregateCache
from tidings.eventsourcing.execution import Plan, Query
from tidings.eventsourcing.records import (
    LogEntry,
    LogPage,
    envelope_row,
    new_event_rows,
    require_aware,
    row_to_envelope,
    rows_to_entries,
)
from tidings.eventsourcing.replay import replay_rows
from tidings.eventsourcing.snapshots import SnapshotPolicy, restore, snapshot_row
from tidings.eventsourcing.tables import EventStoreSchema
from tidings.persistence.bulk import bulk_insert
from tidings.persistence.log import Checkpoint, committed_after_bound, log_order, read_after

A = TypeVar("A", bound=EventSourcedAggregate)

#: Stands for "no upper bound" in prebuilt statements (stream versions are 32-bit integers).
LAST_VERSION = 2**31 - 1


class Statements:
    """The store's frequent statements, built once per schema with bound parameters: building
    a SQLAlchemy statement costs more than running a small query."""

    def __init__(self, schema: EventStoreSchema) -> None:
        events, snaps = schema.events, schema.snapshots
        # Several rows per append go in as one COPY on PostgreSQL (see persistence.bulk).
        self.insert_events = bulk_insert(insert(events))
        self.insert_snapshots = bulk_insert(insert(snaps))
        self.current_version = select(func.max(events.c.stream_version)).where(
            events.c.stream_id == bindparam("stream_id")
        )
        self.replay = (
            select(
                events.c.stream_version,
                events.c.event_type,
                events.c.event_version,
                events.c.payload,
            )
            .where(
                events.c.stream_id == bindparam("stream_id"),
                events.c.stream_version > bindparam("after"),
                events.c.stream_version <= bindparam("upto"),
            )
            .order_by(events.c.stream_version)
        )
        #: Log pages per (dialect, type names, stream prefix): see log_page_statement.
        self.log_pages: dict[tuple[str, tuple[str, ...] | None, str | None], Select[Any]] = {}
        self.snapshot = (
            select(
                snaps.c.stream_id,
                snaps.c.stream_version,
                snaps.c.state_type,
                snaps.c.state_version,
                snaps.c.state,
            )
            .where(
                snaps.c.stream_id == bindparam("stream_id"),
                snaps.c.stream_version <= bindparam("upto"),
            )
            .order_by(snaps.c.stream_version.desc())
            .limit(1)
        )


#: Distinct filtered log reads kept prebuilt per schema (a projection's filters are fixed; ad
#: hoc filters beyond this many are built per call instead).
_MAX_LOG_STATEMENTS = 256


def log_page_statement(
    schema: EventStoreSchema,
    dialect_name: str,
    names: Sequence[str] | None = None,
    stream_prefix: str | None = None,
) -> Select[Any] | None:
    """The prebuilt log read for ``dialect_name`` and these filters (checkpoint and limit
    bound), or None when too many distinct filters were seen already."""
    prebuilt = statements(schema)
    key = (dialect_name, tuple(names) if names is not None else None, stream_prefix or None)
    found = prebuilt.log_pages.get(key)
    if found is None:
        if len(prebuilt.log_pages) >= _MAX_LOG_STATEMENTS:
            return None
        events = schema.events
        condition = committed_after_bound(events, dialect_name)
        if names is not None:
            # Plain comparisons, not IN: their values are ordinary bound parameters, which the
            # direct shell passes as they are (IN's expanding parameter needs SQLAlchemy).
            condition = and_(condition, or_(false(), *(events.c.event_type == n for n in names)))
        if stream_prefix:
            condition = and_(
                condition, events.c.stream_id.startswith(stream_prefix, autoescape=True)
            )
        found = prebuilt.log_pages[key] = (
            select(events)
            .where(condition)
            .order_by(*log_order(events, dialect_name))
            .limit(bindparam("page_limit", type_=Integer))
        )
    return found


def statements(schema: EventStoreSchema) -> Statements:
    found: Statements | None = schema.__dict__.get("_statements")
    if found is None:
        found = schema.__dict__["_statements"] = Statements(schema)
    return found


def stream_id_of(cls: type[EventSourcedAggregate], id: Any) -> str:
    """The stream id of aggregate ``id`` of class ``cls`` (as :attr:`Aggregate.stream_id`)."""
    return f"{cls.category()}-{id}"


def current_version(schema: EventStoreSchema, stream_id: str) -> Plan[int]:
    """The stream's last version; 0 for a stream that does not exist."""
    rows = yield Query(statements(schema).current_version, {"stream_id": stream_id}, direct=True)
    return int(rows[0][0] or 0)


def append(
    schema: EventStoreSchema,
    codec: Codec,
    stream_id: str,
    events: Sequence[object],
    expected_version: int,
) -> Plan[int]:
    """Append ``events`` after ``expected_version``; returns the new stream version.

    The version check happens first, so a stale writer fails before writing; the unique and
    no-gap constraints catch the writer that raced past the check (the shell translates that
    violation into the same :class:`ConcurrencyError`).
    """
    _check_version(stream_id, expected_version)
    if not events:
        raise ValueError(f"nothing to append to stream {stream_id!r}: events is empty")
    actual = yield from current_version(schema, stream_id)
    if actual != expected_version:
        raise ConcurrencyError(stream_id, expected_version, actual)
    rows = new_event_rows(stream_id, events, expected_version, codec)
    yield Query(
        statements(schema).insert_events,
        rows,
        fetch=False,
        conflict=(stream_id, expected_version),
        direct=True,
    )
    return expected_version + len(rows)


def _check_version(stream_id: str, expected_version: int) -> None:
    if not isinstance(stream_id, str) or not stream_id:
        raise ValueError(f"stream id must be a non-empty string, got {stream_id!r}")
    if (
        not isinstance(expected_version, int)
        or isinstance(expected_version, bool)
        or expected_version < 0
    ):
        raise ValueError(
            f"expected_version for stream {stream_id!r} must be an integer >= 0 "
            f"(0 for a new stream), got {expected_version!r}"
        )


def append_batch(
    schema: EventStoreSchema,
    codec: Codec,
    batch: CommitBatch,
    snapshots: SnapshotPolicy | None,
) -> list[Query]:
    """The inserts for every event-sourced aggregate's pending events in a commit batch.

    One statement per stream, so a constraint violation names its stream (its first row is
    ``expected_version + 1``: the version the aggregate had before its pending events).
    """
    by_stream: dict[str | None, list[dict[str, Any]]] = {}
    queries: list[Query] = []
    snapshot_rows: list[dict[str, Any]] = []
    for aggregate in batch.aggregates:
        if not isinstance(aggregate, EventSourcedAggregate):
            continue
        stream = aggregate.stream_id
        if stream in by_stream:
            continue
        rows = by_stream[stream] = [
            envelope_row(envelope, codec)
            for envelope in batch.envelopes
            if envelope.stream_id == stream
        ]
        if not rows:
            continue
        version_before = int(rows[0]["stream_version"]) - 1
        queries.append(
            Query(
                statements(schema).insert_events,
                rows,
                fetch=False,
                conflict=(stream, version_before),
                direct=True,
            )
        )
        if snapshots is not None and snapshots.due(aggregate, version_before):
            snapshot_rows.append(snapshot_row(aggregate, codec))
    if snapshot_rows:
        queries.append(
            Query(statements(schema).insert_snapshots, snapshot_rows, fetch=False, direct=True)
        )
    return queries


def save(
    schema: EventStoreSchema,
    codec: Codec,
    aggregates: Sequence[EventSourcedAggregate],
    snapshots: SnapshotPolicy | None,
) -> Plan[CommitBatch]:
    """Append every pending event of ``aggregates`` (outside a unit of work), atomically."""
    batch = CommitBatch()
    pending: list[tuple[int, Any]] = []
    for aggregate in aggregates:
        batch.aggregates.append(aggregate)
        pending.extend((seq, env) for seq, env in aggregate._pending_list())
    pending.sort(key=lambda item: item[0])
    batch.sequences = [seq for seq, _ in pending]
    batch.envelopes = [env for _, env in pending]
    # No version read first: each stream's insert starts at the version after the one the
    # aggregate was loaded at, so the unique and no-gap constraints reject a stale save (the
    # store then reads the actual version for the error). One statement fewer per save.
    # A plain loop, not ``yield from``: a list has no send(), and inserts return no rows.
    for query in append_batch(schema, codec, batch, snapshots):  # noqa: UP028
        yield query
    return batch


def read_stream(
    schema: EventStoreSchema,
    stream_id: str,
    *,
    from_version: int | None = None,
    to_version: int | None = None,
    backward: bool = False,
    limit: int | None = None,
) -> Plan[list[LogEntry]]:
    """Raw rows of one stream; forward from ``from_version`` (default 1), or backward from it
    (default: the last version). Raises :class:`StreamNotFound` for a stream never written."""
    events = schema.events
    condition = events.c.stream_id == stream_id
    if from_version is not None:
        bound = (
            events.c.stream_version <= from_version
            if backward
            else events.c.stream_version >= from_version
        )
        condition = and_(condition, bound)
    if to_version is not None:
        bound = (
            events.c.stream_version >= to_version
            if backward
            else events.c.stream_version <= to_version
        )
        condition = and_(condition, bound)
    order = events.c.stream_version.desc() if backward else events.c.stream_version
    statement = select(events).where(condition).order_by(order)
    if limit is not None:
        statement = statement.limit(_positive(limit, "limit"))
    rows = yield Query(statement)
    if not rows:
        exists = yield from current_version(schema, stream_id)
        if not exists:
            raise StreamNotFound(stream_id)
    return rows_to_entries(rows)


def _positive(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def type_names(types: Iterable[str | type] | None) -> list[str] | None:
    """Stored names to filter by: classes count with their aliases (old rows use those)."""
    if types is None:
        return None
    names: list[str] = []
    for item in types:
        if isinstance(item, str):
            names.append(item)
        elif is_event_class(item):
            spec = spec_of(item)
            names.extend((spec.name, *spec.aliases))
        else:
            raise ValueError(f"event type filter must be a type name or event class: {item!r}")
    return names


def read_log(
    schema: EventStoreSchema,
    dialect_name: str,
    after: Checkpoint,
    *,
    limit: int = 1000,
    types: Iterable[str | type] | None = None,
    stream_prefix: str | None = None,
    stream_id: str | None = None,
) -> Plan[LogPage]:
    """A page of the global log after ``after`` (gap-safe), optionally filtered."""
    rows = yield from _log_rows(
        schema, dialect_name, after, limit, types, stream_prefix=stream_prefix, stream_id=stream_id
    )
    entries = rows_to_entries(rows)
    return LogPage(entries, entries[-1].checkpoint if entries else after)


def read_log_decoded(
    schema: EventStoreSchema,
    dialect_name: str,
    after: Checkpoint,
    codec: Codec,
    *,
    limit: int = 1000,
    types: Iterable[str | type] | None = None,
    stream_prefix: str | None = None,
) -> Plan[tuple[list[Envelope[Any]], Checkpoint]]:
    """A page of the global log as :func:`read_log` reads it, decoded: the envelopes and the
    checkpoint to continue from. Projections read this way (each row straight to its
    envelope); a codec failure is an :class:`~tidings.errors.UnreadableEvent`."""
    rows = yield from _log_rows(schema, dialect_name, after, limit, types, stream_prefix)
    envelopes: list[Envelope[Any]] = []
    checkpoint = after
    for row in rows:
        checkpoint, envelope = row_to_envelope(row, codec)
        envelopes.append(envelope)
    return envelopes, checkpoint


def _log_rows(
    schema: EventStoreSchema,
    dialect_name: str,
    after: Checkpoint,
    limit: int,
    types: Iterable[str | type] | None,
    stream_prefix: str | None,
    stream_id: str | None = None,
) -> Plan[Sequence[Any]]:
    """The full rows (columns in table order) of a page of the global log after ``after``."""
    if not isinstance(after, Checkpoint):
        raise ValueError(f"after must be a Checkpoint, got {after!r}")
    events = schema.events
    limit = _positive(limit, "limit")
    names = type_names(types)
    prebuilt = (
        log_page_statement(schema, dialect_name, names, stream_prefix)
        if stream_id is None
        else None
    )
    if prebuilt is not None:
        # The projection hot path: a prebuilt statement on the driver's cursor.
        rows: Sequence[Any] = yield Query(
            prebuilt,
            {"after_tx": after.tx, "after_position": after.position, "page_limit": limit},
            direct=True,
        )
        return rows
    statement = read_after(events, after, dialect_name, limit=limit)
    if names is not None:
        statement = statement.where(events.c.event_type.in_(names))
    if stream_prefix:
        statement = statement.where(events.c.stream_id.startswith(stream_prefix, autoescape=True))
    if stream_id is not None:
        statement = statement.where(events.c.stream_id == stream_id)
    rows = yield Query(statement)
    return rows


def load_through(
    cache: AggregateCache | None,
    schema: EventStoreSchema,
    codec: Codec,
    cls: type[A],
    id: Any,
    *,
    at_version: int | None,
    as_of: datetime | None,
    use_snapshots: bool,
) -> Plan[A] | A:
    """How to load aggregate ``id`` with ``cache``: the plan to run (from the cached state when
    there is one, see :mod:`.cache`), or, when the cache trusts its entries, the cached
    aggregate itself (nothing to read)."""
    cached = None
    if cache is not None and at_version is None and as_of is None:
        cached = cache.take(cls, stream_id_of(cls, id))
        if cached is not None and not cache.fast_forward:
            return cached
    return load(
        schema,
        codec,
        cls,
        id,
        at_version=at_version,
        as_of=as_of,
        use_snapshots=use_snapshots,
        start=cached,
    )


def load(
    schema: EventStoreSchema,
    codec: Codec,
    cls: type[A],
    id: Any,
    *,
    at_version: int | None = None,
    as_of: datetime | None = None,
    use_snapshots: bool = True,
    start: A | None = None,
) -> Plan[A]:
    """Rebuild aggregate ``id``: latest usable snapshot, then the events after it.

    ``at_version`` and ``as_of`` (a timezone-aware moment) give the state as it was then.
    ``start`` (its current state, from the aggregate cache) is brought up to date with the
    events after its version instead.
    """
    stream_id = stream_id_of(cls, id)
    if start is not None:
        rows = yield Query(
            statements(schema).replay,
            {"stream_id": stream_id, "after": start.version, "upto": LAST_VERSION},
            direct=True,
        )
        if rows:
            replay_rows(start, stream_id, rows, codec)
        return start
    events = schema.events
    if at_version is not None:
        _positive(at_version, "at_version")
    if as_of is not None:
        if at_version is not None:
            raise ValueError("pass at_version= or as_of=, not both")
        moment = require_aware(as_of, "as_of")
        rows = yield Query(
            select(func.max(events.c.stream_version)).where(
                events.c.stream_id == stream_id, events.c.occurred_at <= moment
            )
        )
        if rows[0][0] is None:
            raise StreamNotFound(stream_id, f"it had no events yet at {moment.isoformat()}")
        at_version = int(rows[0][0])

    prebuilt = statements(schema)
    upto = at_version if at_version is not None else LAST_VERSION
    if use_snapshots and hasattr(cls, "from_snapshot"):
        found = yield Query(prebuilt.snapshot, {"stream_id": stream_id, "upto": upto}, direct=True)
        if found:
            start = cast("A | None", restore(cls, id, found[0], codec))

    after_version = start.version if start is not None else 0
    rows = yield Query(
        prebuilt.replay,
        {"stream_id": stream_id, "after": after_version, "upto": upto},
        direct=True,
    )
    if start is None and not rows:
        raise StreamNotFound(stream_id)
    instance = start if start is not None else cls.blank(id)
    last = replay_rows(instance, stream_id, rows, codec)
    if at_version is not None and last < at_version:
        raise StreamNotFound(stream_id, f"it has no version {at_version} (it is at version {last})")
    return instance
