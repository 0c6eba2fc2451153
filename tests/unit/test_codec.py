"""The codec: exact round trips (property-based), and errors that name the type and the field."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings import (
    Codec,
    CodecError,
    EventRegistry,
    EventVersionError,
    PayloadError,
    UnknownEventType,
    event,
)
from tidings.core.messages import to_envelope, to_stored


class Currency(enum.Enum):
    EUR = "EUR"
    USD = "USD"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass(frozen=True, slots=True)
class Money:
    amount: Decimal
    currency: Currency


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int
    price: Money


@event(name="codec-test.OrderPlaced", version=2)
class OrderPlaced:
    order_id: UUID
    placed_at: datetime
    deliver_on: date
    total: Money
    lines: tuple[Line, ...]
    priority: Priority
    note: str | None = None


@event(name="codec-test.Stamped")
class Stamped:
    at: datetime


class Shipment(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)
    tracking: UUID
    weight: Decimal


@event(name="codec-test.PydanticShipped")
class PydanticShipped(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)
    order_id: UUID
    shipped_at: datetime
    shipment: Shipment
    tags: tuple[str, ...]


@pytest.fixture
def codec() -> Codec:
    return _codec()


# -- property-based round trips ---------------------------------------------------------------

finite_decimals = st.decimals(allow_nan=False, allow_infinity=False)
aware_datetimes = st.datetimes(
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    )
)
money = st.builds(Money, amount=finite_decimals, currency=st.sampled_from(Currency))
lines = st.builds(Line, sku=st.text(), quantity=st.integers(-(2**63), 2**63 - 1), price=money)
orders = st.builds(
    OrderPlaced,
    order_id=st.uuids(),
    placed_at=aware_datetimes,
    deliver_on=st.dates(),
    total=money,
    lines=st.lists(lines, max_size=4).map(tuple),
    priority=st.sampled_from(Priority),
    note=st.none() | st.text(),
)


@settings(max_examples=150, deadline=None, database=None)
@given(orders)
def test_dataclass_events_round_trip_exactly(order: OrderPlaced) -> None:
    codec = _codec()
    type_name, version, payload = codec.encode(order)
    assert (type_name, version) == ("codec-test.OrderPlaced", 2)
    decoded = codec.decode(type_name, version, payload)
    assert decoded == order
    assert type(decoded.lines) is tuple  # type: ignore[attr-defined]
    assert decoded.placed_at.utcoffset() == order.placed_at.utcoffset()  # type: ignore[attr-defined]
    # Decimal keeps its exact digits and exponent, not just its value.
    assert str(decoded.total.amount) == str(order.total.amount)  # type: ignore[attr-defined]


@settings(max_examples=50, deadline=None, database=None)
@given(st.datetimes())
def test_naive_datetimes_stay_naive(at: datetime) -> None:
    codec = _codec()
    decoded = codec.decode(*codec.encode(Stamped(at)))
    assert decoded == Stamped(at)
    assert decoded.at.tzinfo is None  # type: ignore[attr-defined]


@settings(max_examples=75, deadline=None, database=None)
@given(
    st.builds(
        PydanticShipped,
        order_id=st.uuids(),
        shipped_at=aware_datetimes,
        shipment=st.builds(Shipment, tracking=st.uuids(), weight=finite_decimals),
        tags=st.lists(st.text(), max_size=3).map(tuple),
    )
)
def test_pydantic_events_round_trip_exactly(shipped: PydanticShipped) -> None:
    codec = _codec()
    decoded = codec.decode(*codec.encode(shipped))
    assert decoded == shipped


_shared: list[Codec] = []


def _codec() -> Codec:
    # hypothesis tests cannot take function-scoped fixtures; build the private codec once.
    if not _shared:
        registry = EventRegistry()
        for cls in (OrderPlaced, Stamped, PydanticShipped):
            registry.register(cls)
        _shared.append(Codec(registry))
    return _shared[0]


def sample_order() -> OrderPlaced:
    return OrderPlaced(
        order_id=UUID(int=42),
        placed_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        deliver_on=date(2026, 1, 9),
        total=Money(Decimal("10.50"), Currency.EUR),
        lines=(Line("sku-1", 2, Money(Decimal("5.25"), Currency.EUR)),),
        priority=Priority.HIGH,
    )


def test_payload_is_plain_json_with_fields_only(codec: Codec) -> None:
    _, _, payload = codec.encode(sample_order())
    document = json.loads(payload)
    assert document["order_id"] == str(UUID(int=42))
    assert document["total"] == {"amount": "10.50", "currency": "EUR"}
    assert document["priority"] == 2
    assert "type" not in document  # the type name travels beside the payload


def test_envelope_round_trips_through_the_stored_form(codec: Codec) -> None:
    from tidings import Aggregate

    class Shop(Aggregate):
        id = "s1"

    envelope = Shop().record(sample_order())
    stored = to_stored(envelope, codec)
    assert stored.payload == codec.encode_payload(envelope.event)
    back = to_envelope(stored, codec)
    assert back == envelope


# -- errors ----------------------------------------------------------------------------------


def test_unknown_type_names_the_type(codec: Codec) -> None:
    with pytest.raises(UnknownEventType, match=r"'codec-test\.Nope'") as caught:
        codec.decode("codec-test.Nope", 1, b"{}")
    assert caught.value.type_name == "codec-test.Nope"


def test_newer_version_than_registered_is_refused(codec: Codec) -> None:
    _, _, payload = codec.encode(sample_order())
    with pytest.raises(EventVersionError, match="written by newer code") as caught:
        codec.decode("codec-test.OrderPlaced", 3, payload)
    assert "'codec-test.OrderPlaced'" in str(caught.value)
    assert (caught.value.stored_version, caught.value.current_version) == (3, 2)


def test_older_version_without_upcaster_is_refused(codec: Codec) -> None:
    with pytest.raises(EventVersionError, match="no upcaster from version 1") as caught:
        codec.decode("codec-test.OrderPlaced", 1, b"{}")
    assert "'codec-test.OrderPlaced'" in str(caught.value)


def v1_payload() -> bytes:
    document = json.loads(Codec(EventRegistry()).encode_payload(sample_order()))
    document["amount"] = document.pop("total")  # version 1 called it "amount"
    return json.dumps(document).encode()


def versioned_codec() -> tuple[Codec, EventRegistry]:
    registry = EventRegistry()
    registry.register(OrderPlaced)
    return Codec(registry), registry


def test_upcaster_turns_an_old_payload_into_the_current_class() -> None:
    codec, registry = versioned_codec()

    @registry.upcaster("codec-test.OrderPlaced", 1)
    def rename_amount(data: dict[str, Any]) -> dict[str, Any]:
        data["total"] = data.pop("amount")
        return data

    assert codec.decode("codec-test.OrderPlaced", 1, v1_payload()) == sample_order()


def test_upcaster_that_raises_is_reported_with_the_type() -> None:
    codec, registry = versioned_codec()

    def broken(data: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("total")

    registry.add_upcaster("codec-test.OrderPlaced", 1, broken)
    with pytest.raises(EventVersionError, match=r"upcaster from version 1 raised KeyError") as c:
        codec.decode("codec-test.OrderPlaced", 1, v1_payload())
    assert "'codec-test.OrderPlaced'" in str(c.value)
    assert isinstance(c.value.__cause__, KeyError)


def test_upcaster_that_returns_a_non_dict_is_reported() -> None:
    codec, registry = versioned_codec()
    registry.add_upcaster("codec-test.OrderPlaced", 1, lambda data: [data])  # type: ignore[arg-type,return-value]
    with pytest.raises(EventVersionError, match="returned list, not a dict"):
        codec.decode("codec-test.OrderPlaced", 1, v1_payload())


def test_upcaster_output_that_does_not_fit_names_the_field() -> None:
    codec, registry = versioned_codec()
    registry.add_upcaster("codec-test.OrderPlaced", 1, lambda data: data)  # forgot the rename
    with pytest.raises(PayloadError, match=r"'codec-test\.OrderPlaced'.*`total`"):
        codec.decode("codec-test.OrderPlaced", 1, v1_payload())


def test_upcaster_registered_twice_is_refused() -> None:
    from tidings import EventDefinitionError

    _, registry = versioned_codec()
    registry.add_upcaster("codec-test.OrderPlaced", 1, lambda data: data)
    with pytest.raises(EventDefinitionError, match="already registered"):
        registry.add_upcaster("codec-test.OrderPlaced", 1, lambda data: data)


@pytest.mark.parametrize("payload", [b"{not json", b"", b"\xff\xfe"])
def test_payload_that_is_not_json_is_a_payload_error(codec: Codec, payload: bytes) -> None:
    with pytest.raises(PayloadError, match=r"'codec-test\.OrderPlaced'.*not valid JSON"):
        codec.decode("codec-test.OrderPlaced", 2, payload)


def test_old_payload_that_is_not_json_is_a_payload_error() -> None:
    codec, registry = versioned_codec()
    registry.add_upcaster("codec-test.OrderPlaced", 1, lambda data: data)
    with pytest.raises(PayloadError, match="not valid JSON"):
        codec.decode("codec-test.OrderPlaced", 1, b"{oops")
    with pytest.raises(PayloadError, match="not a JSON object"):
        codec.decode("codec-test.OrderPlaced", 1, b"[1, 2]")


def mutate(path: list[str | int], value: Any) -> bytes:
    document = json.loads(Codec(EventRegistry()).encode_payload(sample_order()))
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param(mutate(["order_id"], "not-a-uuid"), "$.order_id", id="bad-uuid"),
        pytest.param(mutate(["placed_at"], "yesterday"), "$.placed_at", id="bad-datetime"),
        pytest.param(mutate(["total", "amount"], "ten"), "$.total.amount", id="bad-decimal"),
        pytest.param(mutate(["total", "currency"], "GBP"), "$.total.currency", id="bad-enum"),
        pytest.param(mutate(["lines", 0, "quantity"], "2"), "$.lines[0].quantity", id="nested"),
        pytest.param(mutate(["priority"], 7), "$.priority", id="bad-intenum"),
        pytest.param(
            json.dumps({"order_id": str(UUID(int=1))}).encode(), "placed_at", id="missing"
        ),
    ],
)
def test_payload_not_matching_the_schema_names_type_and_field(
    codec: Codec, payload: bytes, field: str
) -> None:
    with pytest.raises(PayloadError) as caught:
        codec.decode("codec-test.OrderPlaced", 2, payload)
    message = str(caught.value)
    assert "'codec-test.OrderPlaced'" in message
    assert "does not match the schema" in message
    assert field in message
    assert caught.value.type_name == "codec-test.OrderPlaced"


def test_pydantic_payload_not_matching_names_type_and_field(codec: Codec) -> None:
    _, _, payload = codec.encode(
        PydanticShipped(
            order_id=UUID(int=1),
            shipped_at=datetime(2026, 1, 1, tzinfo=UTC),
            shipment=Shipment(tracking=UUID(int=2), weight=Decimal("1.5")),
            tags=(),
        )
    )
    document = json.loads(payload)
    document["shipment"]["weight"] = "heavy"
    with pytest.raises(PayloadError, match=r"'codec-test\.PydanticShipped'") as caught:
        codec.decode("codec-test.PydanticShipped", 1, json.dumps(document))
    assert "shipment.weight" in str(caught.value)


def test_encoding_a_value_json_cannot_hold_is_a_codec_error(codec: Codec) -> None:
    @event(name="codec-test.HoldsAnything")
    class HoldsAnything:
        value: Any

    with pytest.raises(CodecError, match=r"'codec-test\.HoldsAnything' cannot be encoded"):
        codec.encode(HoldsAnything(value=object()))


def test_every_codec_error_is_a_tidings_error() -> None:
    from tidings import TidingsError

    for error in (UnknownEventType, EventVersionError, PayloadError):
        assert issubclass(error, CodecError)
    assert issubclass(CodecError, TidingsError)
