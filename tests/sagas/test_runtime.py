"""The saga runtime decides without I/O: state, commands, timeouts, completion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tidings import ConfigurationError, event
from tidings.sagas import Saga, StoredSaga, handles, run_saga, starts
from tidings.sagas.runtime import SagaStateError, decode_state, encode_state

from .model import (
    AuthorizePayment,
    CancelOrder,
    FulfilmentState,
    OrderConfirmed,
    OrderFulfilment,
    PaymentFailed,
    PaymentOverdue,
    PaymentSucceeded,
    ReleaseStock,
    StockReserved,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def stored(state: FulfilmentState, version: int = 1, completed: bool = False) -> StoredSaga:
    return StoredSaga("o-1", encode_state(state), version, completed)


def test_a_starting_event_creates_state_sends_commands_and_schedules() -> None:
    outcome = run_saga(OrderFulfilment, OrderConfirmed("o-1", ("a",)), None, now=NOW)
    assert outcome.handled and outcome.key == "o-1" and outcome.expected_version == 0
    assert outcome.commands == [AuthorizePayment("o-1")]
    assert [(t.message, t.due_at) for t in outcome.timeouts] == [
        (PaymentOverdue("o-1"), NOW + timedelta(minutes=15))
    ]
    assert not outcome.completed


def test_a_non_starting_event_without_instance_is_ignored_with_reason() -> None:
    outcome = run_saga(OrderFulfilment, PaymentSucceeded("o-1"), None, now=NOW)
    assert not outcome.handled
    assert "does not start" in outcome.reason


def test_compensation_releases_what_was_reserved_and_completes() -> None:
    state = FulfilmentState(reserved=["a", "b"])
    outcome = run_saga(OrderFulfilment, PaymentFailed("o-1", "declined"), stored(state), now=NOW)
    assert outcome.commands == [
        ReleaseStock("o-1", "a"),
        ReleaseStock("o-1", "b"),
        CancelOrder("o-1", "declined"),
    ]
    assert outcome.completed and outcome.cancel_timeouts and outcome.expected_version == 1


def test_timeouts_need_the_key_and_reach_on_timeout() -> None:
    outcome = run_saga(
        OrderFulfilment, PaymentOverdue("o-1"), stored(FulfilmentState()), now=NOW, key="o-1"
    )
    assert outcome.commands == [CancelOrder("o-1", "payment overdue")]


def test_completed_instances_ignore_later_messages() -> None:
    done = stored(FulfilmentState(paid=True), completed=True)
    outcome = run_saga(OrderFulfilment, StockReserved("o-1", "x"), done, now=NOW)
    assert not outcome.handled and "completed" in outcome.reason


def test_state_round_trips_and_corrupt_state_is_a_clear_error() -> None:
    state = FulfilmentState(reserved=["x"], paid=True, events_seen=3)
    assert decode_state(OrderFulfilment, stored(state)) == state
    with pytest.raises(SagaStateError, match=r"test-order-fulfilment instance 'o-1' \(version 1\)"):
        decode_state(OrderFulfilment, StoredSaga("o-1", b'{"reserved": 5}', 1, False))


def test_unrouted_messages_and_bad_declarations_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="does not handle"):
        run_saga(OrderFulfilment, AuthorizePayment("o-1"), None, now=NOW)

    @event(name="sagatest.Other")
    class Other:
        order_id: str

    with pytest.raises(ConfigurationError, match="routed to both"):

        class Twice(Saga[FulfilmentState]):
            name = "twice"
            state_type = FulfilmentState

            @starts(Other, by="order_id")
            def one(self, event: Other) -> None: ...

            @handles(Other, by="order_id")
            def two(self, event: Other) -> None: ...


def test_schedule_rejects_ambiguous_or_naive_times() -> None:
    saga = OrderFulfilment("o-1", FulfilmentState(), envelope=None, now=NOW)
    with pytest.raises(ConfigurationError, match="exactly one"):
        saga.schedule(PaymentOverdue("o-1"))
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        saga.schedule(PaymentOverdue("o-1"), at=datetime(2026, 1, 1))


def test_missing_correlation_value_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="no correlation value"):
        run_saga(OrderFulfilment, OrderConfirmed("", ()), None, now=NOW)
