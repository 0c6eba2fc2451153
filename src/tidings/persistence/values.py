"""Column values as the Python values tidings works with, whoever read them.

Rows reach tidings converted by SQLAlchemy (UUIDs, aware or naive datetimes) or straight from the
driver's cursor (:mod:`tidings.persistence.direct`), where SQLite hands back the stored text: 32
hex digits for a UUID, ISO text without an offset for a datetime (tidings stores UTC only). The
log readers (the relay, projections, the event store) convert every row of every page, so these
are written for that path.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from tidings.core.ids import uuid_from_int

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
    return uuid_from_int(int(value, 16))


#: Names of time zones whose offset is zero at every moment (PostgreSQL's sessions often run in
#: ``Etc/UTC``, which psycopg returns as that ``ZoneInfo``).
_UTC_KEYS = frozenset(
    {
        *("UTC", "Etc/UTC", "UCT", "Etc/UCT", "Universal", "Etc/Universal", "Zulu", "Etc/Zulu"),
        *("GMT", "Etc/GMT", "GMT0", "Etc/GMT0", "GMT+0", "Etc/GMT+0", "GMT-0", "Etc/GMT-0"),
        *("Greenwich", "Etc/Greenwich"),
    }
)
#: Whether each time zone object seen so far is UTC under another name (a handful at most).
_utc_zones: dict[tzinfo, bool] = {}


def _is_always_utc(zone: tzinfo) -> bool:
    known = _utc_zones.get(zone)
    if known is None:
        if isinstance(zone, ZoneInfo):
            known = zone.key in _UTC_KEYS
        else:
            known = isinstance(zone, timezone) and zone.utcoffset(None) == timedelta(0)
        if len(_utc_zones) < 64:
            _utc_zones[zone] = known
    return known


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
    if zone is None or _is_always_utc(zone):
        # replace(tzinfo=UTC) would do the same in four times the time (keyword handling), and
        # astimezone(UTC) in twice the time.
        return _combine(moment.date(), moment.time(), UTC)
    return moment.astimezone(UTC)
