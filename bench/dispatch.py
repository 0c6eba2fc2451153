"""In-process dispatch overhead per event per handler: tidings vs a plain dict vs blinker.

Same events, same handler functions, same process, interleaved repetitions. Three ways:

* ``plain dict``: ``for handler in registry.get(type(event), ()): handler(event)``, the floor.
* ``blinker``: one ``Signal`` per event type, ``signal.send(event)``.
* ``tidings``: what a unit of work does per event when it dispatches in-transaction handlers,
  running the same two functions ``commit()`` runs for a round: ``plan_round`` (the
  ``Handlers.for_type`` lookup) and ``UnitOfWork._dispatch`` (pointing the causation cell at the
  event, the handler calls, the awaitable check, error annotation set-up).
* ``tidings commit()``: the whole commit on a store that writes nothing (collecting pending
  events, ordering, cascade detection, batch bookkeeping, clearing), divided per event: the
  complete cost, with nothing skipped.

Throughput (``events/s``, ``ns/event/handler``, ``vs plain``) is the best of the repetitions,
with the garbage collector on.
Latency percentiles time one event at a time (``dispatch_once``), timer overhead included for
all alike; for tidings that is a round of one event, its worst case (``p50 vs plain``).
The target of issue 2 is tidings within 2x of the plain dict.

    python bench/dispatch.py [--quick] [--handlers N]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import blinker

from tidings import Aggregate, Envelope, Handlers, Timing, UnitOfWork, event
from tidings.core.commit import plan_round


@event(name="bench.OrderPlaced")
class OrderPlaced:
    order_id: int


@event(name="bench.OrderPaid")
class OrderPaid:
    order_id: int
    amount: int


@event(name="bench.OrderShipped")
class OrderShipped:
    order_id: int


@event(name="bench.OrderCancelled")
class OrderCancelled:
    order_id: int


EVENT_TYPES: tuple[type, ...] = (OrderPlaced, OrderPaid, OrderShipped, OrderCancelled)


class Shop(Aggregate):
    def __init__(self) -> None:
        self.id = "bench"


def make_events(count: int) -> list[Envelope[Any]]:
    shop = Shop()
    for n in range(count):
        kind = EVENT_TYPES[n % len(EVENT_TYPES)]
        shop.record(kind(n, n) if kind is OrderPaid else kind(n))
    return shop.pending_events


def make_handler_functions(per_type: int) -> tuple[list[int], list[Callable[[Any], None]]]:
    """``per_type`` distinct trivial handlers; each counts its calls so none is skipped."""
    calls = [0]

    def make(index: int) -> Callable[[Any], None]:
        def handler(event: Any) -> None:
            calls[0] += 1

        handler.__qualname__ = f"handler_{index}"
        return handler

    return calls, [make(i) for i in range(per_type)]


class Dispatcher(Protocol):
    """One way of dispatching; ``dispatch_once`` (one event at a time, for latency) is optional."""

    name: str

    def dispatch_all(self, envelopes: list[Envelope[Any]]) -> None: ...


class PlainDict:
    name = "plain dict"

    def __init__(self, functions: list[Callable[[Any], None]]) -> None:
        self.registry: dict[type, list[Callable[[Any], None]]] = {}
        for kind in EVENT_TYPES:
            for fn in functions:
                self.registry.setdefault(kind, []).append(fn)

    def dispatch_all(self, envelopes: list[Envelope[Any]]) -> None:
        registry = self.registry
        for envelope in envelopes:
            event = envelope.event
            for handler in registry.get(type(event), ()):
                handler(event)

    def dispatch_once(self, envelope: Envelope[Any]) -> None:
        event = envelope.event
        for handler in self.registry.get(type(event), ()):
            handler(event)


class Blinker:
    name = "blinker"

    def __init__(self, functions: list[Callable[[Any], None]]) -> None:
        self.signals: dict[type, blinker.Signal] = {}
        for kind in EVENT_TYPES:
            signal = self.signals[kind] = blinker.Signal()
            for fn in functions:
                # blinker calls receiver(sender): the event is the sender.
                signal.connect(fn, weak=False)

    def dispatch_all(self, envelopes: list[Envelope[Any]]) -> None:
        signals = self.signals
        for envelope in envelopes:
            event = envelope.event
            signals[type(event)].send(event)

    def dispatch_once(self, envelope: Envelope[Any]) -> None:
        event = envelope.event
        self.signals[type(event)].send(event)


class Tidings:
    name = "tidings"

    def __init__(self, functions: list[Callable[[Any], None]]) -> None:
        self.handlers = Handlers()
        for kind in EVENT_TYPES:
            for fn in functions:
                self.handlers.add(kind, fn, when=Timing.IN_TRANSACTION)
        # A real, open unit of work: its cause cell and flags are what handlers run under.
        self.uow = UnitOfWork(self.handlers)
        self.uow.__enter__()

    # Both run the same two functions commit() runs for a round: plan_round, then _dispatch.
    def dispatch_all(self, envelopes: list[Envelope[Any]]) -> None:
        self.uow._dispatch(plan_round(envelopes, self.handlers))

    def dispatch_once(self, envelope: Envelope[Any]) -> None:
        self.uow._dispatch(plan_round([envelope], self.handlers))


class TidingsCommit:
    """The whole synchronous commit on a store that writes nothing, per event."""

    name = "tidings commit()"

    def __init__(self, functions: list[Callable[[Any], None]]) -> None:
        self.handlers = Handlers()
        for kind in EVENT_TYPES:
            for fn in functions:
                self.handlers.add(kind, fn, when=Timing.IN_TRANSACTION)
        self._pending: tuple[list[Envelope[Any]], list[tuple[int, Envelope[Any]]]] | None = None

    def dispatch_all(self, envelopes: list[Envelope[Any]]) -> None:
        # The events are recorded once, outside the timing; each run starts from the same
        # pending events, as a commit of freshly recorded events would.
        if self._pending is None or self._pending[0] is not envelopes:
            self._pending = (envelopes, list(enumerate(envelopes, 1)))
        shop = Shop()
        shop._pending_list().extend(self._pending[1])
        with UnitOfWork(self.handlers) as uow:
            uow.add(shop)
            uow.commit()


def measure(
    dispatchers: Sequence[Dispatcher],
    envelopes: list[Envelope[Any]],
    repeats: int,
    latency_samples: int,
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {
        d.name: {"best": float("inf"), "latencies": []} for d in dispatchers
    }
    sample = envelopes[:latency_samples]
    clock = time.perf_counter_ns
    for _ in range(repeats):
        for dispatcher in dispatchers:  # interleaved: machine noise hits all alike
            # The garbage collector stays on: a dispatcher that allocates per event pays for
            # the collections it triggers, as it would in an application. Each run starts
            # from a collected heap so none inherits another's debt.
            gc.collect()
            started = time.perf_counter()
            dispatcher.dispatch_all(envelopes)
            elapsed = time.perf_counter() - started
            result = results[dispatcher.name]
            result["best"] = min(result["best"], elapsed)
            once: Callable[[Envelope[Any]], None] | None = getattr(
                dispatcher, "dispatch_once", None
            )
            if once is None:
                continue
            latencies = result["latencies"]
            for envelope in sample:
                begin = clock()
                once(envelope)
                latencies.append(clock() - begin)
    return results


def percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events and repeats")
    parser.add_argument("--handlers", type=int, default=0, help="handlers per event type")
    args = parser.parse_args()
    events = 20_000 if args.quick else 100_000
    repeats = 3 if args.quick else 7
    latency_samples = 2_000 if args.quick else 10_000
    handler_counts = [args.handlers] if args.handlers else [1, 3]

    print(f"python {sys.version.split()[0]}, {events} events x {repeats} repeats, interleaved")
    worst_ratio = 0.0
    for per_type in handler_counts:
        calls, functions = make_handler_functions(per_type)
        envelopes = make_events(events)
        dispatchers: list[Dispatcher] = [
            PlainDict(functions),
            Blinker(functions),
            Tidings(functions),
            TidingsCommit(functions),
        ]
        results = measure(dispatchers, envelopes, repeats, latency_samples)
        expected = per_type * (events * repeats * len(dispatchers) + latency_samples * 3 * repeats)
        assert calls[0] == expected, (calls[0], expected)  # every handler ran every time
        base = results["plain dict"]["best"] / (events * per_type)
        base_p50 = percentile(results["plain dict"]["latencies"], 0.50)
        print(f"\n{per_type} handler(s) per event")
        print(
            f"  {'dispatcher':<17} {'events/s':>12} {'ns/event/handler':>17} "
            f"{'p50 ns':>8} {'p99 ns':>8} {'vs plain':>9} {'p50 vs plain':>13}"
        )
        for dispatcher in dispatchers:
            result = results[dispatcher.name]
            per_handler = result["best"] / (events * per_type)
            ratio = per_handler / base
            latencies = result["latencies"]
            if latencies:
                p50_ns = percentile(latencies, 0.50)
                p50, p99 = f"{p50_ns:8.0f}", f"{percentile(latencies, 0.99):8.0f}"
                p50_ratio = f"{p50_ns / base_p50:12.2f}x"
            else:
                p50, p99, p50_ratio = f"{'-':>8}", f"{'-':>8}", f"{'-':>13}"
            print(
                f"  {dispatcher.name:<17} {events / result['best']:>12,.0f} "
                f"{per_handler * 1e9:>17.0f} {p50} {p99} {ratio:>8.2f}x {p50_ratio}"
            )
            if dispatcher.name == "tidings":
                worst_ratio = max(worst_ratio, ratio)
        tidings = dispatchers[2]
        assert isinstance(tidings, Tidings)
        tidings.uow.__exit__(None, None, None)
    verdict = "meets" if worst_ratio <= 2.0 else "MISSES"
    print(f"\ntidings in-transaction dispatch: worst {worst_ratio:.2f}x plain dict ({verdict} 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
