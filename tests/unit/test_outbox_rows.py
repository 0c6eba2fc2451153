"""The outbox row a unit of work writes for an event, built straight from its envelope."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tidings import Aggregate, event
from tidings.core.codec import default_codec
from tidings.core.envelope import Envelope
from tidings.core.messages import to_stored
from tidings.outbox import tables


@event(name="test.rows.Noted")
class Noted:
    text: str


class Note(Aggregate):
    def __init__(self, note_id: str) -> None:
        self.id = note_id


def envelopes() -> list[Envelope[Any]]:
    note = Note("n1")
    first = note.record(Noted("plain"))
    traced = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "z": "ü", "a": "1"}
    return [
        first,
        replace(note.record(Noted("ünïcode")), headers=traced),
        replace(note.record(Noted("caused")), causation_id=first.event_id, producer="orders"),
        replace(note.record(Noted("streamless")), stream_id=None, stream_version=None),
    ]


@pytest.mark.parametrize("index", range(4))
def test_the_row_from_an_envelope_is_the_row_from_its_stored_event(index: int) -> None:
    envelope = envelopes()[index]
    expected = tables.row_from_stored(to_stored(envelope, default_codec))
    assert tables.row_from_envelope(envelope, default_codec) == expected
