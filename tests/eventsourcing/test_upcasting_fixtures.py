"""Real stored version-1 rows (tests/eventsourcing/fixtures/stock_v1.json) read as version 3.

The rows are inserted as raw SQL, exactly as the old code stored them; every read upcasts them
through the registry's chain, and afterwards the stored bytes are byte-for-byte unchanged.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import Engine, insert, select

from tidings import EventSourcedAggregate, applies, default_registry, event
from tidings.errors import StreamNotFound
from tidings.eventsourcing import EventStore, default_schema

FIXTURE = Path(__file__).parent / "fixtures" / "stock_v1.json"


@event(name="fixture.StockAdjusted", version=3)
class StockAdjusted:
    item: str
    delta: int
    reason: str


@event(name="fixture.StockState", version=2)
class StockState:
    item: str
    on_hand: int


def _adjusted_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"item": data["sku"], "delta": data["qty"]}


def _adjusted_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "reason": "unspecified"}


def _state_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"item": data["sku"], "on_hand": data["on_hand"]}


for _name, _version, _fn in (
    ("fixture.StockAdjusted", 1, _adjusted_v1_to_v2),
    ("fixture.StockAdjusted", 2, _adjusted_v2_to_v3),
    ("fixture.StockState", 1, _state_v1_to_v2),
):
    if default_registry.upcaster_for(_name, _version) is None:
        default_registry.add_upcaster(_name, _version, _fn)


class Stock(EventSourcedAggregate):
    on_hand: int
    restored_from: int | None

    @applies(StockAdjusted)
    def _adjusted(self, adjusted: StockAdjusted) -> None:
        self.on_hand = getattr(self, "on_hand", 0) + adjusted.delta

    def to_snapshot(self) -> StockState:
        return StockState(str(self.id), self.on_hand)  # type: ignore[attr-defined]

    @classmethod
    def from_snapshot(cls, id: Any, version: int, state: StockState) -> Stock:
        stock = cls.blank(id)
        stock.on_hand = state.on_hand
        stock.restored_from = version
        return stock


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture
def fixture_rows(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    data = json.loads(FIXTURE.read_text())
    events = [
        {
            **row,
            "occurred_at": _when(row["occurred_at"]),
            "event_id": UUID(row["event_id"]),
            "correlation_id": UUID(row["correlation_id"]),
            "previous_version": row["stream_version"] - 1 or None,
            "payload": row["payload"].encode(),
        }
        for row in data["events"]
    ]
    snapshots = [
        {**row, "taken_at": _when(row["taken_at"]), "state": row["state"].encode()}
        for row in data["snapshots"]
    ]
    with engine.begin() as conn:
        conn.execute(insert(default_schema.events), events)
        conn.execute(insert(default_schema.snapshots), snapshots)
    return {"events": events, "snapshots": snapshots}


def _stored(engine: Engine) -> list[tuple[Any, ...]]:
    events = default_schema.events
    with engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                select(events.c.stream_version, events.c.event_version, events.c.payload).order_by(
                    events.c.stream_version
                )
            )
        ]


def test_v1_rows_are_read_as_v3_and_never_rewritten(
    engine: Engine, fixture_rows: dict[str, list[dict[str, Any]]]
) -> None:
    before = _stored(engine)
    store = EventStore(engine)
    decoded = [entry.decode(store.codec) for entry in store.read_stream("Stock-A1")]
    assert [d.event for d in decoded] == [
        StockAdjusted("A1", 10, "unspecified"),
        StockAdjusted("A1", -3, "unspecified"),
        StockAdjusted("A1", -2, "unspecified"),
        StockAdjusted("A1", 7, "unspecified"),
    ]
    assert {d.event_version for d in decoded} == {3}
    assert decoded[0].producer == "warehouse-2025"
    full = store.load(Stock, "A1", use_snapshots=False)
    assert (full.version, full.on_hand) == (4, 12)
    assert _stored(engine) == before
    assert [v for _, v, _ in before] == [1, 1, 1, 2]


def test_v1_snapshot_is_upcast_and_used(
    engine: Engine, fixture_rows: dict[str, list[dict[str, Any]]]
) -> None:
    stock = EventStore(engine).load(Stock, "A1")
    assert stock.restored_from == 2, "loading started from the stored v1 snapshot"
    assert (stock.version, stock.on_hand) == (4, 12)


def test_what_was_the_stock_on_a_date(
    engine: Engine, fixture_rows: dict[str, list[dict[str, Any]]]
) -> None:
    store = EventStore(engine)
    on = {
        "2025-01-10T00:00:00+00:00": 10,
        "2025-01-20T15:30:00+00:00": 7,
        "2025-02-15T00:00:00+00:00": 5,
        "2025-12-31T00:00:00+00:00": 12,
    }
    for moment, expected in on.items():
        assert store.load(Stock, "A1", as_of=_when(moment)).on_hand == expected, moment
    with pytest.raises(StreamNotFound, match="no events yet at 2025-01-01"):
        store.load(Stock, "A1", as_of=datetime(2025, 1, 1, tzinfo=UTC))
