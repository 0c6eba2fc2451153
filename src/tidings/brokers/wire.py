"""How a :class:`~tidings.core.messages.StoredEvent` travels through a broker.

The payload bytes are the message body, untouched. The envelope metadata goes in headers named
after :data:`~tidings.core.messages.METADATA_FIELDS` with a ``tidings-`` prefix
(``event_id`` -> ``tidings-event-id``), as strings, so any broker (and any language) can read
them. Extra headers of the stored event (signature, W3C ``traceparent``, application headers)
travel beside them unchanged.

Reading is strict: a header that is missing or malformed raises :class:`MessageRejected` naming
the header and what was wrong, so the message is dead-lettered with that reason instead of
reaching a handler.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from tidings.core.messages import METADATA_FIELDS, StoredEvent
from tidings.errors import MessageRejected

HEADER_PREFIX = "tidings-"

#: Header name of each metadata field, e.g. ``HEADERS["event_id"] == "tidings-event-id"``.
HEADERS: dict[str, str] = {name: HEADER_PREFIX + name.replace("_", "-") for name in METADATA_FIELDS}
_METADATA_HEADER_NAMES = frozenset(HEADERS.values())
_EVENT_ID = HEADERS["event_id"]
_EVENT_TYPE = HEADERS["event_type"]
_EVENT_VERSION = HEADERS["event_version"]
_STREAM_ID = HEADERS["stream_id"]
_STREAM_VERSION = HEADERS["stream_version"]
_OCCURRED_AT = HEADERS["occurred_at"]
_CORRELATION_ID = HEADERS["correlation_id"]
_CAUSATION_ID = HEADERS["causation_id"]
_PRODUCER = HEADERS["producer"]
# encode_headers writes each metadata field by name (it runs for every message published): a
# field added to METADATA_FIELDS must be added there too.
assert METADATA_FIELDS == (
    "event_id",
    "event_type",
    "event_version",
    "stream_id",
    "stream_version",
    "occurred_at",
    "correlation_id",
    "causation_id",
    "producer",
), "encode_headers lists every metadata field"

TRACEPARENT = "traceparent"
_TRACEPARENT_FORMAT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

#: Longest type name / producer / stream id accepted from the wire; longer is hostile input.
MAX_HEADER_VALUE = 1024


def default_traceparent(stored: StoredEvent) -> str:
    """A W3C traceparent for an event published without one.

    The trace id is the correlation id, so every event of one business transaction lands in the
    same trace even when no tracing library is installed; the span id comes from the event id.
    """
    return f"00-{stored.correlation_id.hex}-{stored.event_id.hex[16:]}-01"


def encode_headers(stored: StoredEvent) -> dict[str, str]:
    """The headers of the message that carries ``stored``.

    Written out field by field (publishing calls this for every message): extra headers first,
    then the metadata in :data:`METADATA_FIELDS` order, absent ones left out.
    """
    headers = (
        {
            name: value
            for name, value in stored.headers.items()
            if name not in _METADATA_HEADER_NAMES  # metadata always comes from the fields
        }
        if stored.headers
        else {}
    )
    headers[_EVENT_ID] = str(stored.event_id)
    headers[_EVENT_TYPE] = stored.event_type
    headers[_EVENT_VERSION] = str(stored.event_version)
    if stored.stream_id is not None:
        headers[_STREAM_ID] = stored.stream_id
    if stored.stream_version is not None:
        headers[_STREAM_VERSION] = str(stored.stream_version)
    headers[_OCCURRED_AT] = stored.occurred_at.isoformat()
    headers[_CORRELATION_ID] = str(stored.correlation_id)
    if stored.causation_id is not None:
        headers[_CAUSATION_ID] = str(stored.causation_id)
    if stored.producer is not None:
        headers[_PRODUCER] = stored.producer
    traceparent = headers.get(TRACEPARENT)
    if traceparent is None or not _TRACEPARENT_FORMAT.match(traceparent):
        headers[TRACEPARENT] = default_traceparent(stored)
    return headers


def normalize_headers(raw: Mapping[Any, Any] | None) -> dict[str, str]:
    """Turn a driver's header mapping into ``str -> str`` (bytes decoded, numbers rendered)."""
    headers: dict[str, str] = {}
    for name, value in (raw or {}).items():
        key = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        if isinstance(value, bytes):
            headers[key] = value.decode("utf-8", "replace")
        elif isinstance(value, str):
            headers[key] = value
        else:
            headers[key] = repr(value)
    return headers


def decode_message(headers: Mapping[str, str], body: bytes) -> StoredEvent:
    """Rebuild the stored event from a message; :class:`MessageRejected` names what is wrong."""
    fields: dict[str, Any] = {
        "event_id": _uuid(headers, "event_id", required=True),
        "event_type": _text(headers, "event_type", required=True),
        "event_version": _integer(headers, "event_version", required=True, minimum=1),
        "stream_id": _text(headers, "stream_id", required=False),
        "stream_version": _integer(headers, "stream_version", required=False, minimum=0),
        "occurred_at": _timestamp(headers, "occurred_at"),
        "correlation_id": _uuid(headers, "correlation_id", required=True),
        "causation_id": _uuid(headers, "causation_id", required=False),
        "producer": _text(headers, "producer", required=False),
    }
    extra = {name: value for name, value in headers.items() if name not in _METADATA_HEADER_NAMES}
    if TRACEPARENT in extra and not _TRACEPARENT_FORMAT.match(extra[TRACEPARENT]):
        # W3C trace context says to ignore a malformed traceparent, not to reject the message.
        del extra[TRACEPARENT]
    return StoredEvent(payload=bytes(body), headers=extra, **fields)


def _raw(headers: Mapping[str, str], field: str, *, required: bool) -> str | None:
    name = HEADERS[field]
    value = headers.get(name)
    if value is None or value == "":
        if required:
            raise MessageRejected(f"header {name} is missing")
        return None
    if len(value) > MAX_HEADER_VALUE:
        raise MessageRejected(
            f"header {name} is {len(value)} characters long (max {MAX_HEADER_VALUE})"
        )
    return value


def _text(headers: Mapping[str, str], field: str, *, required: bool) -> str | None:
    return _raw(headers, field, required=required)


def _uuid(headers: Mapping[str, str], field: str, *, required: bool) -> UUID | None:
    value = _raw(headers, field, required=required)
    if value is None:
        return None
    try:
        return UUID(value)
    except ValueError:
        raise MessageRejected(f"header {HEADERS[field]} is not a UUID: {value[:80]!r}") from None


def _integer(headers: Mapping[str, str], field: str, *, required: bool, minimum: int) -> int | None:
    value = _raw(headers, field, required=required)
    if value is None:
        return None
    if not value.isdigit() or int(value) < minimum:
        raise MessageRejected(
            f"header {HEADERS[field]} must be an integer >= {minimum}, got {value[:80]!r}"
        )
    return int(value)


def _timestamp(headers: Mapping[str, str], field: str) -> datetime:
    value = _raw(headers, field, required=True)
    assert value is not None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MessageRejected(
            f"header {HEADERS[field]} is not an ISO 8601 timestamp: {value[:80]!r}"
        ) from None
    if parsed.tzinfo is None:
        raise MessageRejected(f"header {HEADERS[field]} has no time zone: {value[:80]!r}")
    return parsed
