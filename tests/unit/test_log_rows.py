"""Log rows read straight from the driver convert to the same stored events as rows SQLAlchemy
converted (SQLite hands back UUIDs as hex text and datetimes as naive ISO text)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings import event
from tidings.core.codec import Codec
from tidings.core.registry import EventRegistry
from tidings.errors import UnreadableEvent
from tidings.eventsourcing.records import row_to_entry, row_to_envelope
from tidings.persistence.log import Checkpoint


def row(event_id: object, occurred_at: object, correlation_id: object, causation: object) -> tuple:
    return (
        7, 0, event_id, "t.Happened", 1, "S-1", 1, None, occurred_at,
        correlation_id, causation, None, "{}", b"{}",
    )  # fmt: skip


@given(st.uuids(), st.uuids(), st.datetimes(timezones=st.just(UTC)))
def test_driver_rows_and_converted_rows_agree(
    event_id: uuid.UUID, correlation_id: uuid.UUID, moment: datetime
) -> None:
    converted = row_to_entry(row(event_id, moment, correlation_id, None)).event
    raw = row_to_entry(
        row(
            event_id.hex,
            moment.replace(tzinfo=None).isoformat(sep=" "),
            correlation_id.hex,
            None,
        )
    ).event
    assert raw == converted
    assert raw.event_id == event_id and hash(raw.event_id) == hash(event_id)
    assert str(raw.correlation_id) == str(correlation_id)
    assert raw.occurred_at.tzinfo is UTC


def test_a_causation_id_and_other_time_zones_convert() -> None:
    cause = uuid.uuid4()
    moment = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    stored = row_to_entry(row(uuid.uuid4().hex, moment, uuid.uuid4(), cause.hex)).event
    assert stored.causation_id == cause
    assert stored.occurred_at == moment and stored.occurred_at.tzinfo is UTC


def test_a_malformed_stored_uuid_is_an_error_not_a_wrong_id() -> None:
    with pytest.raises(ValueError):
        row_to_entry(row("not-a-uuid", datetime.now(UTC), uuid.uuid4(), None))
    with pytest.raises(ValueError):
        row_to_entry(row("z" * 32, datetime.now(UTC), uuid.uuid4(), None))


@event(name="t.Happened")
class Happened:
    amount: int


def happened_row(
    *,
    payload: object = b'{"amount":5}',
    headers: str = "{}",
    causation: object = None,
    stream: tuple[object, object] = ("S-1", 3),
) -> tuple:
    moment = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    return (
        12, 4, uuid.uuid4().hex, "t.Happened", 1, stream[0], stream[1], None,
        moment.replace(tzinfo=None).isoformat(sep=" "), uuid.uuid4().hex, causation,
        "billing", headers, payload,
    )  # fmt: skip


def happened_codec() -> Codec:
    registry = EventRegistry()
    registry.register(Happened)
    return Codec(registry)


@pytest.mark.parametrize(
    "stored",
    [
        happened_row(),
        happened_row(headers='{"traceparent":"00-x","b":"\\u00fc"}', causation=uuid.uuid4().hex),
        happened_row(payload=memoryview(b'{"amount":7}'), stream=(None, None)),
    ],
)
def test_a_row_decodes_straight_to_the_envelope_its_entry_decodes_to(stored: tuple) -> None:
    codec = happened_codec()
    entry = row_to_entry(stored)
    checkpoint, envelope = row_to_envelope(stored, codec)
    assert checkpoint == entry.checkpoint == Checkpoint(4, 12)
    assert envelope == entry.decode(codec)


def test_a_row_that_will_not_decode_names_its_stream_version_and_type() -> None:
    codec = happened_codec()
    broken = happened_row(payload=b'{"amount":"five"}')
    with pytest.raises(UnreadableEvent) as straight:
        row_to_envelope(broken, codec)
    with pytest.raises(UnreadableEvent) as via_entry:
        row_to_entry(broken).decode(codec)
    assert str(straight.value) == str(via_entry.value)
    assert "S-1" in str(straight.value) and "t.Happened" in str(straight.value)
