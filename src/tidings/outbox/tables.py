"""The outbox tables, as SQLAlchemy ``MetaData`` you can hand to Alembic.

* ``tidings_outbox``: the log of committed events waiting for after-commit delivery. Built from
  :func:`tidings.persistence.log.log_columns` (``position``, ``tx``) plus the shared
  :data:`~tidings.core.messages.METADATA_FIELDS`, ``headers`` (JSON text), ``payload`` (the
  encoded bytes, never rewritten) and ``recorded_at`` (for retention).
* ``tidings_subscriber_checkpoints``: one row per (log, subscriber, partition): the last
  ``(tx, position)`` the subscriber has processed in that partition. Written in the same
  transaction as the subscriber's effects.
* ``tidings_subscriber_leases``: who processes which (log, subscriber, partition), until when.
* ``tidings_relay_nodes``: which live relay process serves which (log, subscriber), by
  heartbeat, to share each subscriber's partitions fairly among the nodes serving it.
* ``tidings_dead_letters``: messages whose handling failed past the retry policy, or that could
  not be decoded, or that wait behind one of those (``status = 'held'``), kept whole.
* ``tidings_parked_streams``: (log, subscriber, stream) pairs halted behind a dead letter.

Every follower table carries the ``log`` column (the followed table's name), so one set of
tables serves the outbox and any other log (the event store's events table) at the same time.

Alembic users: include :data:`metadata` in ``target_metadata`` and, on PostgreSQL, give the
outbox ``tx`` column the default ``pg_current_xact_id()::text::bigint`` (see
:func:`tidings.persistence.log.install_tx_default`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.engine import Connection, Engine

from tidings.core.codec import Codec
from tidings.core.envelope import Envelope
from tidings.core.messages import METADATA_FIELDS, StoredEvent
from tidings.persistence import values
from tidings.persistence.log import install_tx_default, log_columns

metadata = MetaData()


def event_columns() -> list[Column[Any]]:
    """The columns that carry one raw event: the shared metadata, headers and payload."""
    return [
        Column("event_id", Uuid(), nullable=False, unique=True),
        Column("event_type", String(255), nullable=False),
        Column("event_version", Integer(), nullable=False),
        Column("stream_id", String(255), nullable=True),
        Column("stream_version", BigInteger(), nullable=True),
        Column("occurred_at", DateTime(timezone=True), nullable=False),
        Column("correlation_id", Uuid(), nullable=False),
        Column("causation_id", Uuid(), nullable=True),
        Column("producer", String(255), nullable=True),
        Column("headers", Text(), nullable=False, default="{}"),
        Column("payload", LargeBinary(), nullable=False),
    ]


def log_table(name: str, meta: MetaData) -> Table:
    """A followable log table: ordering columns, the raw event, and ``recorded_at``."""
    table = Table(
        name,
        meta,
        *log_columns(),
        *event_columns(),
        Column("recorded_at", DateTime(timezone=True), nullable=False),
        # Rows are deleted (retention): SQLite must never hand a deleted row's position out
        # again, or followers whose checkpoint is past it would skip the new row.
        sqlite_autoincrement=True,
    )
    Index(f"ix_{name}_tx_position", table.c.tx, table.c.position)
    Index(f"ix_{name}_recorded_at", table.c.recorded_at)
    install_tx_default(table)
    return table


outbox = log_table("tidings_outbox", metadata)

checkpoints = Table(
    "tidings_subscriber_checkpoints",
    metadata,
    Column("log", String(255), primary_key=True),
    Column("subscriber", String(255), primary_key=True),
    Column("partition", Integer(), primary_key=True),
    Column("tx", BigInteger(), nullable=False, default=0),
    Column("position", BigInteger(), nullable=False, default=0),
    Column("partitions", Integer(), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=True),
)

leases = Table(
    "tidings_subscriber_leases",
    metadata,
    Column("log", String(255), primary_key=True),
    Column("subscriber", String(255), primary_key=True),
    Column("partition", Integer(), primary_key=True),
    Column("owner", String(255), nullable=True),
    # Seconds since the epoch: compared, never displayed, and portable across stores.
    Column("expires_at", Float(), nullable=False, default=0.0),
)

# One heartbeat per (node, log, subscriber) the node serves: fair shares are computed among
# the nodes serving the same subscriber of the same log, never across unrelated relays.
relay_nodes = Table(
    "tidings_relay_nodes",
    metadata,
    Column("node", String(255), primary_key=True),
    Column("log", String(255), primary_key=True),
    Column("subscriber", String(255), primary_key=True),
    Column("heartbeat_at", Float(), nullable=False),
)

dead_letters = Table(
    "tidings_dead_letters",
    metadata,
    Column("id", Integer().with_variant(BigInteger(), "postgresql"), primary_key=True),
    Column("log", String(255), nullable=False),
    Column("subscriber", String(255), nullable=False),
    # 'failed' (handling failed or undecodable) or 'held' (waits behind a failed one).
    Column("status", String(16), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("log_tx", BigInteger(), nullable=False),
    Column("log_position", BigInteger(), nullable=False),
    *[c for c in event_columns() if c.name != "event_id"],
    Column("event_id", Uuid(), nullable=False),
    Column("attempts", Integer(), nullable=False, default=0),
    Column("first_failure_at", DateTime(timezone=True), nullable=True),
    Column("last_failure_at", DateTime(timezone=True), nullable=True),
    Column("exception_type", String(255), nullable=True),
    Column("exception_message", Text(), nullable=True),
    Column("traceback", Text(), nullable=True),
    Column("dead_lettered_at", DateTime(timezone=True), nullable=False),
)
Index("ix_tidings_dead_letters_subscriber", dead_letters.c.subscriber, dead_letters.c.status)
Index(
    "ix_tidings_dead_letters_stream",
    dead_letters.c.log,
    dead_letters.c.subscriber,
    dead_letters.c.stream_id,
)

# A delayed retry in progress, per (log, subscriber, partition): its attempt count and failures
# survive a relay restart, and a relay that takes the partition over continues the schedule.
pending_retries = Table(
    "tidings_pending_retries",
    metadata,
    Column("log", String(255), primary_key=True),
    Column("subscriber", String(255), primary_key=True),
    Column("partition", Integer(), primary_key=True),
    Column("event_id", Uuid(), nullable=False),
    Column("next_attempt", Integer(), nullable=False),
    # Seconds since the epoch on the relay's clock, like lease expiries.
    Column("due_at", Float(), nullable=False),
    Column("first_failure_at", DateTime(timezone=True), nullable=False),
    # JSON list of the failures so far (type, message, traceback, ISO time), for the dead letter.
    Column("failures", Text(), nullable=False),
)

parked_streams = Table(
    "tidings_parked_streams",
    metadata,
    Column("log", String(255), primary_key=True),
    Column("subscriber", String(255), primary_key=True),
    Column("stream_id", String(255), primary_key=True),
    Column("dead_letter_id", BigInteger(), nullable=False),
    Column("parked_at", DateTime(timezone=True), nullable=False),
)


def create_tables(bind: Engine | Connection) -> None:
    """Create every outbox table that does not exist yet (idempotent)."""
    metadata.create_all(bind, checkfirst=True)


# -- conversions between rows and StoredEvent -------------------------------------------------


def _headers(value: Any) -> dict[str, str]:
    if value is None or value == "" or value == "{}":
        return {}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    loaded = json.loads(value)
    if not isinstance(loaded, dict):
        raise ValueError(f"headers are not a JSON object: {value!r}")
    return {str(k): str(v) for k, v in loaded.items()}


def stored_from_row(row: Mapping[Any, Any]) -> StoredEvent:
    """Read a raw event from any row having the shared event columns (any log table)."""
    payload = row["payload"]
    return StoredEvent(
        event_id=values.as_uuid(row["event_id"]),
        event_type=str(row["event_type"]),
        event_version=int(row["event_version"]),
        stream_id=row["stream_id"],
        stream_version=row["stream_version"],
        occurred_at=values.as_utc(row["occurred_at"]),
        correlation_id=values.as_uuid(row["correlation_id"]),
        causation_id=(
            values.as_uuid(row["causation_id"]) if row["causation_id"] is not None else None
        ),
        producer=row["producer"],
        payload=payload.encode() if isinstance(payload, str) else bytes(payload),
        headers=_headers(row["headers"]),
    )


def row_from_stored(stored: StoredEvent) -> dict[str, Any]:
    """The event columns' values for ``stored`` (metadata, headers as JSON text, payload)."""
    row = {name: getattr(stored, name) for name in METADATA_FIELDS}
    row["headers"] = json.dumps(stored.headers, sort_keys=True)
    row["payload"] = stored.payload
    return row


def row_from_envelope(envelope: Envelope[Any], codec: Codec) -> dict[str, Any]:
    """``row_from_stored(to_stored(envelope, codec))``, without the intermediate StoredEvent.

    A unit of work writes one such row per event; skipping the frozen dataclass and the
    attribute-by-attribute copy saves several microseconds each.
    """
    headers = envelope.headers
    return {
        "event_id": envelope.event_id,
        "event_type": envelope.event_type,
        "event_version": envelope.event_version,
        "stream_id": envelope.stream_id,
        "stream_version": envelope.stream_version,
        "occurred_at": envelope.occurred_at,
        "correlation_id": envelope.correlation_id,
        "causation_id": envelope.causation_id,
        "producer": envelope.producer,
        "headers": json.dumps(headers, sort_keys=True) if headers else "{}",
        "payload": codec.encode_payload(envelope.event),
    }


def as_utc(value: Any) -> datetime | None:
    """A datetime column value in UTC (SQLite returns naive datetimes), or None."""
    return None if value is None else values.as_utc(value)


def headers_of(value: Any) -> dict[str, str]:
    """The headers column's value (JSON text, a mapping, or empty) as a dict."""
    return _headers(value)
