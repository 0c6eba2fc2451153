"""The records hot paths build positionally keep their field order.

Aggregate.record, decode_envelope, Translator.to_stored, the relay's batch invoker and the broker
adapters' deliveries pass these fields by position (a keyword per field costs microseconds per
event): a field added or moved must be added or moved there too.
"""

from __future__ import annotations

from dataclasses import fields

from tidings.brokers.port import Delivery
from tidings.core.dispatch import HandlerContext
from tidings.core.envelope import Envelope
from tidings.core.messages import StoredEvent


def test_records_built_positionally_keep_their_field_order() -> None:
    assert [f.name for f in fields(Delivery)] == [
        "body",
        "headers",
        "partition",
        "attempt",
        "broker_id",
    ]
    assert [f.name for f in fields(HandlerContext)] == [
        "envelope",
        "uow",
        "delivery_id",
        "subscriber",
        "attempt",
    ]
    assert [f.name for f in fields(Envelope)] == [
        "event",
        "event_id",
        "event_type",
        "event_version",
        "occurred_at",
        "stream_id",
        "stream_version",
        "correlation_id",
        "causation_id",
        "producer",
        "headers",
    ]
    assert [f.name for f in fields(StoredEvent)] == [
        "event_id",
        "event_type",
        "event_version",
        "stream_id",
        "stream_version",
        "occurred_at",
        "correlation_id",
        "causation_id",
        "producer",
        "payload",
        "headers",
    ]
