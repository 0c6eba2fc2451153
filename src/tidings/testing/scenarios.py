"""Given/when/then helpers for aggregates and sagas.

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
from datetime import UTC, datetime
from typing import Any, Generic, Self, TypeVar

from tidings.core.aggregate import Aggregate, EventSourcedAggregate
from tidings.sagas.definition import Saga
from tidings.sagas.runtime import SagaOutcome, StoredSaga, decode_state, encode_state, run_saga

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


class SagaScenario:
    """Given/when/then for a saga, with no database: the saga's decisions, checked directly.

    *Given* the events it already handled (or a state), *when* one more event (or a timeout),
    *then* the commands it sends, the timeouts it asks for, and whether it completed::

        (SagaScenario(OrderFulfilment, key="o-1")
            .given(OrderConfirmed(...), InventoryReserved(...))
            .when(PaymentFailed("o-1", "declined"))
            .then_sends(ReleaseStock("o-1", "book"), CancelOrder("o-1", "..."))
            .then_completed(False))
    """

    def __init__(self, saga_cls: type[Saga[Any]], *, key: str, now: datetime | None = None) -> None:
        self._saga = saga_cls
        self._key = key
        self.now = now if now is not None else datetime(2026, 1, 1, tzinfo=UTC)
        self._stored: StoredSaga | None = None
        self._outcome: SagaOutcome | None = None
        self._error: BaseException | None = None

    def given(self, *events: object) -> Self:
        """Events the saga handled before (their decisions are history, not the outcome)."""
        for event in events:
            self._stored = self._apply(event, timeout=False)
        return self

    def given_state(self, state: object, *, version: int = 1, completed: bool = False) -> Self:
        self._stored = StoredSaga(self._key, encode_state(state), version, completed)
        return self

    def _run(self, message: object, *, timeout: bool) -> SagaOutcome:
        return run_saga(
            self._saga,
            message,
            self._stored,
            now=self.now,
            key=self._key if timeout else None,
        )

    def _apply(self, message: object, *, timeout: bool) -> StoredSaga | None:
        outcome = self._run(message, timeout=timeout)
        if not outcome.handled:
            return self._stored
        version = (self._stored.version if self._stored else 0) + 1
        return StoredSaga(self._key, outcome.state, version, outcome.completed)

    def when(self, event: object) -> Self:
        return self._when(event, timeout=False)

    def when_timeout(self, timeout: object) -> Self:
        return self._when(timeout, timeout=True)

    def _when(self, message: object, *, timeout: bool) -> Self:
        try:
            self._outcome = self._run(message, timeout=timeout)
        except Exception as exc:
            self._error = exc
        return self

    def _result(self) -> SagaOutcome:
        if self._error is not None:
            raise ScenarioFailure(
                f"the saga raised {type(self._error).__name__}: {self._error}"
            ) from self._error
        if self._outcome is None:
            raise ScenarioFailure("call .when(...) before .then...(...)")
        return self._outcome

    def then_sends(self, *commands: object) -> Self:
        """Exactly these commands, in this order."""
        sent = self._result().commands
        if list(commands) != sent:
            raise ScenarioFailure(
                f"commands differ.\nexpected:\n{_show(list(commands))}\nsent:\n{_show(sent)}"
            )
        return self

    def then_schedules(self, *timeouts: tuple[object, datetime]) -> Self:
        """Exactly these (message, due time) timeouts."""
        got = [(t.message, t.due_at) for t in self._result().timeouts]
        if list(timeouts) != got:
            raise ScenarioFailure(f"timeouts differ: expected {list(timeouts)!r}, got {got!r}")
        return self

    def then_ignored(self, reason: str | None = None) -> Self:
        outcome = self._result()
        if outcome.handled:
            raise ScenarioFailure("expected the saga to ignore the message, but it handled it")
        if reason is not None and reason not in outcome.reason:
            raise ScenarioFailure(f"ignored for {outcome.reason!r}, not {reason!r}")
        return self

    def then_completed(self, completed: bool = True) -> Self:
        if self._result().completed != completed:
            raise ScenarioFailure(f"expected completed={completed}")
        return self

    def then_cancels_timeouts(self) -> Self:
        if not self._result().cancel_timeouts:
            raise ScenarioFailure("expected the saga to cancel its timeouts")
        return self

    def then_state(self, check: Callable[[Any], object]) -> Self:
        outcome = self._result()
        stored = StoredSaga(self._key, outcome.state, 1, outcome.completed)
        if not check(decode_state(self._saga, stored)):
            raise ScenarioFailure("state check returned a falsy value")
        return self
