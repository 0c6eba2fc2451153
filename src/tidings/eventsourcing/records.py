"""Rows of the events table and the Python values they stand for.

Conversions are written for the hot paths: building insert parameters straight from envelopes,
and turning selected rows into :class:`~tidings.core.messages.StoredEvent` without going through
the ORM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec

from tidings.core.codec import Codec
from tidings.core.envelope import Envelope, current_recording_context
from tidings.core.events import spec_of
from tidings.core.ids import uuid7
from tidings.core.messages import StoredEvent, decode_envelope, to_envelope
from tidings.errors import CodecError, UnreadableEvent
from tidings.persistence.log import Checkpoint
from tidings.persistence.values import as_utc, as_uuid

_EMPTY_HEADERS = "{}"
_headers_decoder = msgspec.json.Decoder(dict[str, str])
_headers_encoder = msgspec.json.Encoder()


def require_aware(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware (got naive {moment.isoformat()})")
    return moment.astimezone(UTC)


def encode_headers(headers: dict[str, str]) -> str:
    return _headers_encoder.encode(headers).decode() if headers else _EMPTY_HEADERS


def decode_headers(text: str | None, where: str) -> dict[str, str]:
    if not text or text == _EMPTY_HEADERS:
        return {}
    try:
        return _headers_decoder.decode(text)
    except msgspec.MsgspecError as exc:
        raise CodecError(f"{where}: headers are not a JSON object of strings: {exc}") from exc


def envelope_row(envelope: Envelope[Any], codec: Codec) -> dict[str, Any]:
    """Insert parameters for one recorded envelope (its payload encoded here)."""
    version = envelope.stream_version or 0
    return {
        "event_id": envelope.event_id,
        "event_type": envelope.event_type,
        "event_version": envelope.event_version,
        "stream_id": envelope.stream_id,
        "stream_version": version,
        "previous_version": version - 1 if version > 1 else None,
        "occurred_at": as_utc(envelope.occurred_at),
        "correlation_id": envelope.correlation_id,
        "causation_id": envelope.causation_id,
        "producer": envelope.producer,
        "headers": encode_headers(envelope.headers),
        "payload": codec.encode_payload(envelope.event),
    }


def stored_row(stored: StoredEvent, stream_id: str, stream_version: int) -> dict[str, Any]:
    """Insert parameters for an already encoded event, placed at ``stream_id@stream_version``."""
    return {
        "event_id": stored.event_id,
        "event_type": stored.event_type,
        "event_version": stored.event_version,
        "stream_id": stream_id,
        "stream_version": stream_version,
        "previous_version": stream_version - 1 if stream_version > 1 else None,
        "occurred_at": as_utc(stored.occurred_at),
        "correlation_id": stored.correlation_id,
        "causation_id": stored.causation_id,
        "producer": stored.producer,
        "headers": encode_headers(stored.headers),
        "payload": bytes(stored.payload),
    }


def new_event_rows(
    stream_id: str, events: Iterable[object], expected_version: int, codec: Codec
) -> list[dict[str, Any]]:
    """Rows for events appended directly to the store (not recorded by an aggregate).

    Domain event objects get fresh metadata from the recording context, exactly as
    :meth:`Aggregate.record` would give them; envelopes and :class:`StoredEvent` keep theirs.
    """
    context = current_recording_context()
    rows: list[dict[str, Any]] = []
    for offset, item in enumerate(events, start=1):
        version = expected_version + offset
        if isinstance(item, StoredEvent):
            rows.append(stored_row(item, stream_id, version))
            continue
        if isinstance(item, Envelope):
            item = item.event
        spec = spec_of(type(item))
        event_id = uuid7()
        rows.append(
            {
                "event_id": event_id,
                "event_type": spec.name,
                "event_version": spec.version,
                "stream_id": stream_id,
                "stream_version": version,
                "previous_version": version - 1 if version > 1 else None,
                "occurred_at": as_utc(context.clock()),
                "correlation_id": context.correlation_id or event_id,
                "causation_id": context.causation_id,
                "producer": context.producer,
                "headers": _EMPTY_HEADERS,
                "payload": codec.encode_payload(item, spec),
            }
        )
    return rows


class LogEntry(NamedTuple):
    """One row of the global log: its place, and the raw event."""

    tx: int
    position: int
    event: StoredEvent

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.tx, self.position)

    def decode(self, codec: Codec) -> Envelope[Any]:
        """The decoded (and upcast) envelope; :class:`UnreadableEvent` names what failed."""
        try:
            return to_envelope(self.event, codec)
        except CodecError as exc:
            raise UnreadableEvent(
                self.event.stream_id, self.event.stream_version, self.event.event_type, str(exc)
            ) from exc


@dataclass(frozen=True, slots=True)
class LogPage:
    """A page of the log and the checkpoint to continue from."""

    entries: list[LogEntry]
    next: Checkpoint

    def __len__(self) -> int:
        return len(self.entries)


def _row_fields(row: Any) -> tuple[Any, ...]:
    """A full events-table row (columns in table order) converted: ``(position, tx)`` and then
    the :class:`StoredEvent` fields in their order. Rows converted by SQLAlchemy and rows
    straight from the driver (SQLite's hex UUIDs and naive ISO text) alike."""
    (
        position,
        tx,
        event_id,
        event_type,
        event_version,
        stream_id,
        stream_version,
        _previous_version,
        occurred_at,
        correlation_id,
        causation_id,
        producer,
        headers,
        payload,
    ) = row
    return (
        position,
        tx,
        as_uuid(event_id),
        event_type,
        event_version,
        stream_id,
        stream_version,
        as_utc(occurred_at),
        as_uuid(correlation_id),
        None if causation_id is None else as_uuid(causation_id),
        producer,
        payload if type(payload) is bytes else bytes(payload),
        {}
        if headers == _EMPTY_HEADERS
        else decode_headers(headers, f"{stream_id}@{stream_version}"),
    )


def row_to_entry(row: Any) -> LogEntry:
    """A full events-table row (columns in table order) to a :class:`LogEntry`, undecoded."""
    position, tx, *fields = _row_fields(row)
    return LogEntry(tx, position, StoredEvent(*fields))


def row_to_envelope(row: Any, codec: Codec) -> tuple[Checkpoint, Envelope[Any]]:
    """A full events-table row straight to its checkpoint and decoded envelope.

    What ``row_to_entry(row).decode(codec)`` gives, with the same errors (a codec failure is
    an :class:`UnreadableEvent` naming the stream, version and type), without building the
    intermediate :class:`StoredEvent` and :class:`LogEntry`: projections decode every event
    they read, and those two objects were about a fifth of the cost of a catch-up.
    """
    position, tx, *fields = _row_fields(row)
    try:
        envelope = decode_envelope(codec, *fields)
    except CodecError as exc:
        _, event_type, _, stream_id, stream_version = fields[:5]
        raise UnreadableEvent(stream_id, stream_version, event_type, str(exc)) from exc
    return Checkpoint(tx, position), envelope


def rows_to_entries(rows: Sequence[Any]) -> list[LogEntry]:
    convert: Callable[[Any], LogEntry] = row_to_entry
    return [convert(row) for row in rows]
