"""How a :class:`~tidings.core.messages.StoredEvent` travels through a broker.

The payload bytes are the message body, untouched. The envelope metadata goes in headers named
after :data:`~tidings.core.messages.METADATA_FIELDS` with a ``tidings-`` prefix
(``event_id`` -> ``tidings-event-id``), as strings, so any broker (and any language) can read
them. Extra headers of the stored event (signature, W3C ``traceparent``, application headers)
travel beside them unchanged.

Reading is strict: a header that is missing or malformed raises :class:`MessageRejected` naming
the header and what was wrong, so the message is dead-lettered with that reason instead of
reaching a handler. Ids are 32 hexadecimal digits, hyphenated 8-4-4-4-12 as written here or not
at all (:func:`~tidings.core.ids.parse_uuid`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from email.header import Header, decode_header
from typing import Annotated, Any
from uuid import UUID

import msgspec

from tidings.core.ids import parse_uuid, uuid_text
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
    headers[_EVENT_ID] = uuid_text(stored.event_id)
    headers[_EVENT_TYPE] = stored.event_type
    headers[_EVENT_VERSION] = str(stored.event_version)
    if stored.stream_id is not None:
        headers[_STREAM_ID] = stored.stream_id
    if stored.stream_version is not None:
        headers[_STREAM_VERSION] = str(stored.stream_version)
    headers[_OCCURRED_AT] = stored.occurred_at.isoformat()
    headers[_CORRELATION_ID] = uuid_text(stored.correlation_id)
    if stored.causation_id is not None:
        headers[_CAUSATION_ID] = uuid_text(stored.causation_id)
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
        elif isinstance(value, Header):
            headers[key] = _header_text(value)
        else:
            headers[key] = repr(value)
    return headers


def _header_text(value: Header) -> str:
    """The text of a header the email parser could not keep as a string.

    nats-py reads stored JetStream messages (``get_msg``) with ``email.parser``, which returns a
    ``Header`` object for a value holding non-ASCII bytes (a dead-letter reason quoting a
    hostile header, say); its parts still carry the original bytes, which are UTF-8 on NATS.
    """
    raw = b"".join(
        part if isinstance(part, bytes) else part.encode("utf-8")
        for part, _charset in decode_header(value)
    )
    return raw.decode("utf-8", "replace")


class _Metadata(msgspec.Struct, rename=HEADERS):
    """The metadata headers of a well-formed message, checked by msgspec in C (see
    :func:`decode_message`): what a producer writes passes; anything else falls to the checks
    that name what is wrong."""

    event_id: UUID
    event_type: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_HEADER_VALUE)]
    event_version: str
    occurred_at: str
    correlation_id: UUID
    stream_id: Annotated[str, msgspec.Meta(max_length=MAX_HEADER_VALUE)] = ""
    stream_version: str = ""
    # "" (no cause) fails here and is read by the checks as None.
    causation_id: UUID | None = None
    producer: Annotated[str, msgspec.Meta(max_length=MAX_HEADER_VALUE)] = ""


def decode_message(headers: Mapping[str, str], body: bytes) -> StoredEvent:
    """Rebuild the stored event from a message; :class:`MessageRejected` names what is wrong.

    Integers are ASCII digits within a signed 64-bit range; anything else is rejected here, so a
    hostile header is dead-lettered at once rather than failing later (and being retried).

    This runs for every message consumed. The headers are first read in one ``msgspec.convert``
    (ids parsed and lengths checked in C: about 1 microsecond where the checks one by one take
    5); what it refuses goes through :func:`_decode_checked`, which refuses it too and says why.
    The result is the same either way (a property test holds them to it).
    """
    get = headers.get
    causation_id = get(_CAUSATION_ID, "")
    # msgspec would also read a UUID from 16 raw bytes or a UUID object: text only here.
    if (
        type(get(_EVENT_ID)) is str
        and type(get(_CORRELATION_ID)) is str
        and type(causation_id) is str
    ):
        try:
            metadata = msgspec.convert(headers, _Metadata)
        except msgspec.ValidationError:
            pass
        else:
            stream_version = metadata.stream_version
            return StoredEvent(
                metadata.event_id,
                metadata.event_type,
                _integer(metadata.event_version, _EVENT_VERSION, 1),
                metadata.stream_id or None,
                _integer(stream_version, _STREAM_VERSION, 0) if stream_version else None,
                _timestamp(metadata.occurred_at, _OCCURRED_AT),
                metadata.correlation_id,
                metadata.causation_id,
                metadata.producer or None,
                bytes(body),
                _extra(headers),
            )
    return _decode_checked(headers, body)


def _decode_checked(headers: Mapping[str, str], body: bytes) -> StoredEvent:
    """:func:`decode_message` one header at a time, each check naming its header."""
    get = headers.get
    # Each helper takes the header as found (None when absent) and makes every check of it.
    causation_id = get(_CAUSATION_ID)
    stream_version = get(_STREAM_VERSION)
    return StoredEvent(
        event_id=_uuid(get(_EVENT_ID), _EVENT_ID),
        event_type=_required(get(_EVENT_TYPE), _EVENT_TYPE),
        event_version=_integer(get(_EVENT_VERSION), _EVENT_VERSION, 1),
        stream_id=_optional(get(_STREAM_ID), _STREAM_ID),
        stream_version=_integer(stream_version, _STREAM_VERSION, 0) if stream_version else None,
        occurred_at=_timestamp(get(_OCCURRED_AT), _OCCURRED_AT),
        correlation_id=_uuid(get(_CORRELATION_ID), _CORRELATION_ID),
        causation_id=_uuid(causation_id, _CAUSATION_ID) if causation_id else None,
        producer=_optional(get(_PRODUCER), _PRODUCER),
        payload=bytes(body),
        headers=_extra(headers),
    )


def _extra(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers that are not metadata, without a malformed ``traceparent``."""
    extra = {name: value for name, value in headers.items() if name not in _METADATA_HEADER_NAMES}
    traceparent = extra.get(TRACEPARENT)
    if traceparent is not None and not _TRACEPARENT_FORMAT.match(traceparent):
        # W3C trace context says to ignore a malformed traceparent, not to reject the message.
        del extra[TRACEPARENT]
    return extra


def _too_long(value: str, name: str) -> MessageRejected:
    return MessageRejected(
        f"header {name} is {len(value)} characters long (max {MAX_HEADER_VALUE})"
    )


def _required(value: str | None, name: str) -> str:
    """A header that must be there and not empty."""
    if not value:
        raise MessageRejected(f"header {name} is missing")
    if len(value) > MAX_HEADER_VALUE:
        raise _too_long(value, name)
    return value


def _optional(value: str | None, name: str) -> str | None:
    """A header that may be absent; absent and empty both mean "no value"."""
    if not value:
        return None
    if len(value) > MAX_HEADER_VALUE:
        raise _too_long(value, name)
    return value


def _uuid(value: str | None, name: str) -> UUID:
    text = _required(value, name)
    try:
        return parse_uuid(text)
    except ValueError:
        raise MessageRejected(f"header {name} is not a UUID: {text[:80]!r}") from None


#: The largest integer a metadata header may carry: what a signed 64-bit column holds.
MAX_HEADER_INTEGER = 2**63 - 1


def _integer(value: str | None, name: str, minimum: int) -> int:
    # ASCII digits only: str.isdigit() also accepts characters such as "²" (which int() then
    # refuses) and other scripts' digits (which int() reads), neither of which a producer sends.
    # Up to 18 digits a number is below MAX_HEADER_INTEGER, so only the minimum is left to check.
    if value and len(value) < 19 and value.isdigit() and value.isascii():
        number = int(value)
        if number >= minimum:
            return number
    text = _required(value, name)
    if (
        not text.isascii()
        or not text.isdigit()
        or len(text) > 19
        or not minimum <= int(text) <= MAX_HEADER_INTEGER
    ):
        raise MessageRejected(
            f"header {name} must be an integer >= {minimum}"
            f" (at most {MAX_HEADER_INTEGER}), got {text[:80]!r}"
        )
    return int(text)


def _timestamp(value: str | None, name: str) -> datetime:
    text = _required(value, name)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise MessageRejected(
            f"header {name} is not an ISO 8601 timestamp: {text[:80]!r}"
        ) from None
    if parsed.tzinfo is None:
        raise MessageRejected(f"header {name} has no time zone: {text[:80]!r}")
    return parsed
