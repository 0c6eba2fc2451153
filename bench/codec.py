"""Encode + decode round trip of a realistic event: msgspec (the Codec's choice) vs orjson.

The event has a UUID, an aware datetime, a Decimal, enums, a nested dataclass and a tuple of
nested dataclasses. Candidates, same events, same run, interleaved repetitions:

* ``tidings Codec``: ``Codec.encode`` + ``Codec.decode`` (msgspec, typed and validated decode).
* ``msgspec``: a bare typed ``Encoder``/``Decoder`` pair, to show what the Codec adds.
* ``orjson + hand-written``: ``orjson.dumps`` + ``orjson.loads`` + a conversion written by hand
  for this one class back into the dataclass. No validation: the most favourable case for
  orjson, and code every event type would need.
* ``orjson + msgspec.convert``: orjson for the JSON, msgspec's generic validated conversion.

Every candidate is checked to round-trip the events exactly before it is timed.

    python bench/codec.py [--quick]
"""

from __future__ import annotations

import argparse
import enum
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import msgspec
import orjson

from tidings import Codec, EventRegistry, event


class Currency(enum.Enum):
    EUR = "EUR"
    USD = "USD"


class Channel(enum.Enum):
    WEB = "web"
    STORE = "store"


@dataclass(frozen=True, slots=True)
class Money:
    amount: Decimal
    currency: Currency


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int
    unit_price: Money


@event(name="bench.codec.OrderPlaced")
class OrderPlaced:
    order_id: UUID
    buyer_id: UUID
    placed_at: datetime
    channel: Channel
    total: Money
    lines: tuple[Line, ...]
    coupon: str | None = None


def make_events(count: int) -> list[OrderPlaced]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = []
    for n in range(count):
        lines = tuple(
            Line(f"sku-{n}-{i}", i + 1, Money(Decimal(f"{n % 97}.{i:02d}"), Currency.EUR))
            for i in range(3)
        )
        events.append(
            OrderPlaced(
                order_id=uuid4(),
                buyer_id=uuid4(),
                placed_at=start + timedelta(seconds=n, microseconds=n % 1000),
                channel=Channel.WEB if n % 2 else Channel.STORE,
                total=Money(
                    sum((line.unit_price.amount for line in lines), Decimal(0)), Currency.EUR
                ),
                lines=lines,
                coupon=None if n % 3 else "WELCOME",
            )
        )
    return events


def tidings_codec() -> Callable[[OrderPlaced], object]:
    registry = EventRegistry()
    registry.register(OrderPlaced)
    codec = Codec(registry)

    def round_trip(value: OrderPlaced) -> object:
        return codec.decode(*codec.encode(value))

    return round_trip


def bare_msgspec() -> Callable[[OrderPlaced], object]:
    encoder = msgspec.json.Encoder(decimal_format="string")
    decoder = msgspec.json.Decoder(OrderPlaced)

    def round_trip(value: OrderPlaced) -> object:
        return decoder.decode(encoder.encode(value))

    return round_trip


def _orjson_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _money(data: dict[str, Any]) -> Money:
    return Money(Decimal(data["amount"]), Currency(data["currency"]))


def orjson_by_hand() -> Callable[[OrderPlaced], object]:
    def round_trip(value: OrderPlaced) -> object:
        data = orjson.loads(orjson.dumps(value, default=_orjson_default))
        return OrderPlaced(
            order_id=UUID(data["order_id"]),
            buyer_id=UUID(data["buyer_id"]),
            placed_at=datetime.fromisoformat(data["placed_at"]),
            channel=Channel(data["channel"]),
            total=_money(data["total"]),
            lines=tuple(
                Line(line["sku"], line["quantity"], _money(line["unit_price"]))
                for line in data["lines"]
            ),
            coupon=data["coupon"],
        )

    return round_trip


def orjson_msgspec_convert() -> Callable[[OrderPlaced], object]:
    def round_trip(value: OrderPlaced) -> object:
        return msgspec.convert(
            orjson.loads(orjson.dumps(value, default=_orjson_default)), OrderPlaced
        )

    return round_trip


CANDIDATES = {
    "tidings Codec": tidings_codec,
    "msgspec": bare_msgspec,
    "orjson + hand-written": orjson_by_hand,
    "orjson + convert": orjson_msgspec_convert,
}


def percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events and repeats")
    args = parser.parse_args()
    count = 5_000 if args.quick else 20_000
    repeats = 3 if args.quick else 5
    events = make_events(count)
    round_trips = {name: factory() for name, factory in CANDIDATES.items()}
    for name, round_trip in round_trips.items():
        for value in events[:200]:
            assert round_trip(value) == value, f"{name} does not round-trip exactly"

    best = dict.fromkeys(round_trips, float("inf"))
    latencies: dict[str, list[int]] = {name: [] for name in round_trips}
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, round_trip in round_trips.items():  # interleaved
                samples = latencies[name]
                started = time.perf_counter()
                for value in events:
                    begin = clock()
                    round_trip(value)
                    samples.append(clock() - begin)
                best[name] = min(best[name], time.perf_counter() - started)
    finally:
        gc.enable()

    size = len(Codec(EventRegistry()).encode_payload(events[0]))
    print(f"python {sys.version.split()[0]}, {count} events x {repeats} repeats, ~{size} B JSON")
    print(f"  {'candidate':<22} {'round trips/s':>14} {'p50 ns':>8} {'p99 ns':>8} {'vs codec':>9}")
    reference = best["tidings Codec"]
    for name in round_trips:
        print(
            f"  {name:<22} {count / best[name]:>14,.0f} "
            f"{percentile(latencies[name], 0.5):>8.0f} {percentile(latencies[name], 0.99):>8.0f} "
            f"{best[name] / reference:>8.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
