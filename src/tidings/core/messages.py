"""The raw form of an event: envelope metadata plus the encoded payload bytes.

This is what the outbox and the event store keep in rows, and what brokers carry in message
headers and bodies. Nothing in it is decoded, so a message that cannot be decoded (unknown type,
corrupt payload, failed upcast) can still be stored, dead-lettered and replayed *exactly*, byte
for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from tidings.core.codec import Codec, default_codec
from tidings.core.envelope import Envelope
from tidings.core.frozen import quick_init

#: Column names shared by every log table (outbox, event store) and the header names brokers
#: use. Keep them in one place so a follower can read any log.
METADATA_FIELDS = (
    "event_id",
    "event_type",
    "event_version",
    "stream_id",
    "stream_version",
    "occurred_at",
    "correlation_id",
    "causation_id",
    "producer",
)


@quick_init
@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored or transmitted: metadata, headers and undecoded payload bytes."""

    event_id: UUID
    event_type: str
    event_version: int
    stream_id: str | None
    stream_version: int | None
    occurred_at: datetime
    correlation_id: UUID
    causation_id: UUID | None
    producer: str | None
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in METADATA_FIELDS}

    def describe(self) -> str:
        where = f" {self.stream_id}@{self.stream_version}" if self.stream_id else ""
        return f"{self.event_type} v{self.event_version}{where} ({self.event_id})"


def to_stored(envelope: Envelope[Any], codec: Codec | None = None) -> StoredEvent:
    """Encode an envelope's event; metadata is copied as is."""
    codec = codec or default_codec
    return StoredEvent(
        event_id=envelope.event_id,
        event_type=envelope.event_type,
        event_version=envelope.event_version,
        stream_id=envelope.stream_id,
        stream_version=envelope.stream_version,
        occurred_at=envelope.occurred_at,
        correlation_id=envelope.correlation_id,
        causation_id=envelope.causation_id,
        producer=envelope.producer,
        payload=codec.encode_payload(envelope.event),
        headers=dict(envelope.headers),
    )


def to_envelope(stored: StoredEvent, codec: Codec | None = None) -> Envelope[Any]:
    """Decode (and upcast) the payload; raises a :class:`tidings.CodecError` naming the type.

    The envelope keeps the *current* schema version of the decoded class, since that is what the
    event object now is; the stored version is in ``stored.event_version``.
    """
    return decode_envelope(
        codec or default_codec,
        stored.event_id,
        stored.event_type,
        stored.event_version,
        stored.stream_id,
        stored.stream_version,
        stored.occurred_at,
        stored.correlation_id,
        stored.causation_id,
        stored.producer,
        stored.payload,
        dict(stored.headers),
    )


def decode_envelope(
    codec: Codec,
    event_id: UUID,
    event_type: str,
    event_version: int,
    stream_id: str | None,
    stream_version: int | None,
    occurred_at: datetime,
    correlation_id: UUID,
    causation_id: UUID | None,
    producer: str | None,
    payload: bytes,
    headers: dict[str, str],
) -> Envelope[Any]:
    """:func:`to_envelope` from the fields of a stored event (in :class:`StoredEvent`'s order),
    for readers that have them from a row and need no StoredEvent; ``headers`` is taken as is.
    """
    event = codec.decode(event_type, event_version, payload)
    spec = codec.registry.spec(event_type)
    # Positional, in Envelope's field order: keywords cost about 2 us more per event.
    return Envelope(
        event,
        event_id,
        spec.name,
        spec.version,
        occurred_at,
        stream_id,
        stream_version,
        correlation_id,
        causation_id,
        producer,
        headers,
    )
