"""Given/when/then helpers for aggregates.

For an event-sourced aggregate, *given* is its history, *when* a command, *then* the events it
records (or the error it raises)::

    (AggregateScenario(Order, id="o-1")
        .given(OrderStarted(...), OrderConfirmed(...))
        .when(lambda order: order.ship("DHL"))
        .then(OrderShipped(order_id="o-1", carrier="DHL")))

For a state-stored aggregate, *given* is a factory building it::

    AggregateScenario.of(lambda: Ticket.open("t-1", priority=2)).when(...).then(...)

Assertions compare event *values* (type and fields), not envelopes, and show both sides on
mismatch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Self, TypeVar

from tidings.core.aggregate import Aggregate, EventSourcedAggregate

A = TypeVar("A", bound=Aggregate)


class ScenarioFailure(AssertionError):
    """A then-clause did not hold."""


def _show(events: list[object]) -> str:
    return "\n".join(f"  {i}. {event!r}" for i, event in enumerate(events, 1)) or "  (none)"


class AggregateScenario(Generic[A]):
    """One given/when/then check against one aggregate instance."""

    def __init__(self, cls: type[A], id: Any = None) -> None:
        self._cls = cls
        self._id = id
        self._history: list[object] = []
        self._factory: Callable[[], A] | None = None
        self._ran = False
        self._aggregate: A | None = None
        self._error: BaseException | None = None
        self._recorded: list[object] = []

    @classmethod
    def of(cls, factory: Callable[[], A]) -> AggregateScenario[A]:
        """A scenario whose starting state is built by ``factory`` (events it records are
        part of *given*, not of *then*)."""
        scenario: AggregateScenario[A] = cls(Aggregate)  # type: ignore[arg-type]
        scenario._factory = factory
        return scenario

    def given(self, *events: object) -> Self:
        """Past events of an event-sourced aggregate."""
        if self._factory is not None or not issubclass(self._cls, EventSourcedAggregate):
            raise TypeError(
                f"{self._cls.__qualname__} is not event-sourced; use AggregateScenario.of(factory)"
            )
        self._history.extend(events)
        return self

    def _start(self) -> A:
        if self._factory is not None:
            aggregate = self._factory()
        elif issubclass(self._cls, EventSourcedAggregate):
            aggregate = self._cls.replay(self._id, self._history)
        else:
            raise TypeError(f"{self._cls.__qualname__}: use AggregateScenario.of(factory)")
        # What happened before `when` is history, not the outcome under test.
        aggregate._pending_list().clear()
        return aggregate

    def when(self, command: Callable[[A], object]) -> Self:
        aggregate = self._start()
        self._aggregate = aggregate
        try:
            command(aggregate)
        except Exception as exc:
            self._error = exc
        self._recorded = [envelope.event for envelope in aggregate.pending_events]
        self._ran = True
        return self

    def _require_ran(self) -> None:
        if not self._ran:
            raise ScenarioFailure("call .when(...) before .then(...)")

    def then(self, *expected: object) -> Self:
        """Exactly these events were recorded, in this order."""
        self._require_ran()
        if self._error is not None:
            raise ScenarioFailure(
                f"expected events but the command raised {type(self._error).__name__}: "
                f"{self._error}"
            ) from self._error
        if list(expected) != self._recorded:
            raise ScenarioFailure(
                f"recorded events differ.\nexpected:\n{_show(list(expected))}\n"
                f"recorded:\n{_show(self._recorded)}"
            )
        return self

    def then_nothing(self) -> Self:
        """No event was recorded and nothing was raised."""
        return self.then()

    def then_raises(self, error: type[BaseException], match: str | None = None) -> Self:
        """The command raised ``error`` (optionally with ``match`` in its message) and recorded
        nothing."""
        self._require_ran()
        if not isinstance(self._error, error):
            got = type(self._error).__name__ if self._error else "nothing"
            raise ScenarioFailure(f"expected {error.__name__} to be raised, got {got}")
        if match is not None and match not in str(self._error):
            raise ScenarioFailure(f"{error.__name__} message {str(self._error)!r} lacks {match!r}")
        if self._recorded:
            raise ScenarioFailure(
                f"the command raised but still recorded events:\n{_show(self._recorded)}"
            )
        return self

    def then_state(self, check: Callable[[A], object]) -> Self:
        """``check(aggregate)`` is truthy (or raises its own AssertionError)."""
        self._require_ran()
        assert self._aggregate is not None
        if not check(self._aggregate):
            raise ScenarioFailure("state check returned a falsy value")
        return self
