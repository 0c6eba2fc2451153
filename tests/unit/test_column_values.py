"""Column values as tidings' Python values (tidings.persistence.values): datetimes in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest

from tidings.persistence.values import as_utc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24 01:56:08.520642", datetime(2026, 11, 24, 1, 56, 8, 520642, UTC)),  # SQLite
        ("2026-11-24 01:56:08", datetime(2026, 11, 24, 1, 56, 8, tzinfo=UTC)),
        ("2026-11-24T01:56", datetime(2026, 11, 24, 1, 56, tzinfo=UTC)),
        ("2026-11-24T01:56:08+00:00", datetime(2026, 11, 24, 1, 56, 8, tzinfo=UTC)),
        ("2026-11-24T03:56:08+02:00", datetime(2026, 11, 24, 1, 56, 8, tzinfo=UTC)),
        ("2026-11-23T20:26:08-05:30", datetime(2026, 11, 24, 1, 56, 8, tzinfo=UTC)),
        ("2026-11-24T01:56:08Z", datetime(2026, 11, 24, 1, 56, 8, tzinfo=UTC)),
        ("2026-11-24", datetime(2026, 11, 24, tzinfo=UTC)),
    ],
)
def test_text_is_read_as_utc_whether_or_not_it_has_an_offset(text: str, expected: datetime) -> None:
    moment = as_utc(text)
    assert moment == expected
    assert moment.tzinfo is UTC


@pytest.mark.parametrize("text", ["nonsense", "2026-13-01 00:00:00", "", "2026-11-24 25:00:00"])
def test_unreadable_text_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"isoformat|must be in"):
        as_utc(text)


def test_datetimes_come_back_in_utc_and_naive_ones_are_taken_as_utc() -> None:
    aware = datetime(2026, 11, 24, 1, 2, 3, 4, UTC)
    assert as_utc(aware) is aware
    naive = as_utc(datetime(2026, 11, 24, 1, 2, 3, 4))
    assert (naive, naive.tzinfo) == (aware, UTC)
    berlin = datetime(2026, 11, 24, 2, 2, 3, 4, timezone(timedelta(hours=1)))
    assert as_utc(berlin) == aware
    assert as_utc(berlin).tzinfo is UTC


def test_anything_else_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="expected a datetime"):
        as_utc(20261124)


@pytest.mark.parametrize(
    "zone",
    [ZoneInfo("Etc/UTC"), ZoneInfo("UTC"), ZoneInfo("GMT"), timezone(timedelta(0), "Z")],
)
def test_utc_under_another_name_is_taken_as_utc(zone: tzinfo) -> None:
    # psycopg returns PostgreSQL's Etc/UTC session values with ZoneInfo("Etc/UTC").
    moment = as_utc(datetime(2026, 11, 24, 1, 2, 3, 4, zone))
    assert (moment, moment.tzinfo) == (datetime(2026, 11, 24, 1, 2, 3, 4, UTC), UTC)


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        # London is at +00:00 in winter only: never taken for UTC by its name.
        (datetime(2026, 1, 10, 12, tzinfo=ZoneInfo("Europe/London")), datetime(2026, 1, 10, 12)),
        (datetime(2026, 7, 10, 12, tzinfo=ZoneInfo("Europe/London")), datetime(2026, 7, 10, 11)),
        (datetime(2026, 7, 10, 12, tzinfo=ZoneInfo("Etc/GMT-2")), datetime(2026, 7, 10, 10)),
    ],
)
def test_other_zones_are_converted(local: datetime, expected: datetime) -> None:
    for _ in range(2):  # the second time, from what the first one noted about the zone
        moment = as_utc(local)
        assert (moment, moment.tzinfo) == (expected.replace(tzinfo=UTC), UTC)
