"""Column values as the Python values tidings works with, whoever read them.

Rows reach tidings converted by SQLAlchemy (UUIDs, aware or naive datetimes) or straight from the
driver's cursor (:mod:`tidings.persistence.direct`), where SQLite hands back the stored text: 32
hex digits for a UUID, ISO text without an offset for a datetime (tidings stores UTC only). The
log readers (the relay, projections, the event store) convert every row of every page, so these
are written for that path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, SafeUUID

_new_object = object.__new__
_set_slot = object.__setattr__
_UNKNOWN_SAFETY = SafeUUID.unknown  # an enum member: looking it up each time is not free
_parse_iso = datetime.fromisoformat
_combine = datetime.combine
#: The sixth character from the end of ISO text with a ``+HH:MM`` or ``-HH:MM`` offset.
_OFFSET_SIGNS = ("+", "-")


def as_uuid(value: Any) -> UUID:
    """A UUID from a column value: already one, or text (SQLite's 32 hex digits are built
    without ``UUID.__init__``'s string parsing, which costs more than the rest of a row)."""
    if type(value) is UUID:
        return value
    if type(value) is not str or len(value) != 32:
        return UUID(str(value))  # anything unusual: the standard parser (and its error)
    number = int(value, 16)
    uuid = _new_object(UUID)
    _set_slot(uuid, "int", number)
    _set_slot(uuid, "is_safe", _UNKNOWN_SAFETY)
    return uuid


def as_utc(value: Any) -> datetime:
    """A datetime column value in UTC: naive values (SQLite) are UTC already, ISO text is
    parsed, anything else is a :class:`TypeError`."""
    moment: datetime
    if isinstance(value, str):
        if value[-6:-5] not in _OFFSET_SIGNS and value[-1:] != "Z":
            # Text without an offset (SQLite's) is UTC: parsed with one appended, which costs
            # a tenth of parsing it naive and then calling replace(tzinfo=...) (2 us here).
            try:
                return _parse_iso(value + "+00:00")
            except ValueError:
                pass  # not what it looked like: the plain parse below says what is wrong
        moment = _parse_iso(value)
    elif isinstance(value, datetime):
        moment = value
    else:
        raise TypeError(f"expected a datetime, got {value!r}")
    zone = moment.tzinfo
    if zone is UTC:
        return moment
    if zone is None:
        # replace(tzinfo=UTC) would do the same in four times the time (keyword handling).
        return _combine(moment.date(), moment.time(), UTC)
    return moment.astimezone(UTC)
