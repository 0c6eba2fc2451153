"""The given/when/then helpers themselves: they must fail when the aggregate misbehaves."""

from __future__ import annotations

import pytest

from tidings import Aggregate, EventSourcedAggregate, applies, event
from tidings.testing.scenarios import AggregateScenario, ScenarioFailure


@event(name="scenario.Opened")
class Opened:
    account: str


@event(name="scenario.Deposited")
class Deposited:
    amount: int


class Overdrawn(Exception):
    pass


class Account(EventSourcedAggregate):
    balance: int = 0

    def __init__(self, id: str) -> None:
        self.id = id
        self.record(Opened(id))

    def deposit(self, amount: int) -> None:
        if amount <= 0:
            raise Overdrawn("deposits must be positive")
        self.record(Deposited(amount))

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.balance = 0

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount


class Counter(Aggregate):
    def __init__(self) -> None:
        self.id = "c"
        self.count = 0

    def bump(self) -> None:
        self.count += 1
        self.record(Deposited(1))


def test_event_sourced_given_when_then() -> None:
    (
        AggregateScenario(Account, id="a")
        .given(Opened("a"), Deposited(5))
        .when(lambda account: account.deposit(3))
        .then(Deposited(3))
        .then_state(lambda account: account.balance == 8)
    )


def test_history_is_not_part_of_the_outcome() -> None:
    AggregateScenario.of(lambda: Account("a")).when(lambda a: a.deposit(1)).then(Deposited(1))


def test_wrong_events_fail_with_both_sides_shown() -> None:
    scenario = AggregateScenario(Account, id="a").given(Opened("a")).when(lambda a: a.deposit(2))
    with pytest.raises(ScenarioFailure, match=r"expected:\n  1\. .*amount=3"):
        scenario.then(Deposited(3))


def test_then_raises_and_its_failures() -> None:
    scenario = AggregateScenario(Account, id="a").given(Opened("a")).when(lambda a: a.deposit(-1))
    scenario.then_raises(Overdrawn, match="positive")
    with pytest.raises(ScenarioFailure, match="lacks"):
        scenario.then_raises(Overdrawn, match="something else")
    with pytest.raises(ScenarioFailure, match="raised Overdrawn"):
        scenario.then(Deposited(1))
    ok = AggregateScenario(Account, id="a").given(Opened("a")).when(lambda a: a.deposit(1))
    with pytest.raises(ScenarioFailure, match="got nothing"):
        ok.then_raises(Overdrawn)


def test_state_stored_aggregates_use_a_factory() -> None:
    AggregateScenario.of(Counter).when(Counter.bump).then(Deposited(1)).then_state(
        lambda c: c.count == 1
    )
    with pytest.raises(TypeError, match="not event-sourced"):
        AggregateScenario(Counter).given(Deposited(1))


def test_then_before_when_is_an_error() -> None:
    with pytest.raises(ScenarioFailure, match="when"):
        AggregateScenario(Account, id="a").then()
