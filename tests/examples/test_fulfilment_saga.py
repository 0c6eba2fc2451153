"""The order fulfilment saga's decisions, tested with tidings' saga scenarios (no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from ordering.commands import CancelOrder, RefundPayment, ReleaseStock, ShipOrder
from ordering.domain.events import (
    InventoryReservationFailed,
    InventoryReserved,
    OrderConfirmed,
    OrderLine,
    PaymentFailed,
    PaymentProcessed,
)
from ordering.sagas import PAYMENT_TIMEOUT, OrderFulfilment, PaymentOverdue
from tidings.testing.scenarios import SagaScenario, ScenarioFailure

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LINES = (OrderLine("book", 2, Decimal(20)), OrderLine("lamp", 1, Decimal(5)))
CONFIRMED = OrderConfirmed("o-1", "ada", LINES, Decimal(45))


def saga() -> SagaScenario:
    return SagaScenario(OrderFulfilment, key="o-1", now=NOW)


def test_confirmation_starts_the_payment_clock() -> None:
    saga().when(CONFIRMED).then_sends().then_schedules(
        (PaymentOverdue("o-1"), NOW + PAYMENT_TIMEOUT)
    ).then_completed(False)


def test_success_completes_once_paid_and_everything_reserved() -> None:
    (
        saga()
        .given(CONFIRMED, InventoryReserved("o-1", "book", 2), PaymentProcessed("o-1", 45))
        .when(InventoryReserved("o-1", "lamp", 1))
        .then_sends(ShipOrder("o-1"))
        .then_completed()
    )


def test_events_from_other_streams_may_arrive_before_the_confirmation() -> None:
    (
        saga()
        .given(
            PaymentProcessed("o-1", Decimal(45)),
            InventoryReserved("o-1", "book", 2),
            InventoryReserved("o-1", "lamp", 1),
        )
        .when(CONFIRMED)
        .then_sends(ShipOrder("o-1"))
        .then_schedules()  # already paid: no payment clock
        .then_completed()
    )


def test_payment_failure_releases_what_was_reserved_and_cancels() -> None:
    (
        saga()
        .given(CONFIRMED, InventoryReserved("o-1", "book", 2))
        .when(PaymentFailed("o-1", "card declined"))
        .then_sends(
            ReleaseStock("o-1", "book"), CancelOrder("o-1", "payment failed: card declined")
        )
        .then_cancels_timeouts()
        .then_completed(False)  # stays open to undo late arrivals
    )


def test_out_of_stock_refunds_a_payment_already_taken() -> None:
    (
        saga()
        .given(CONFIRMED, PaymentProcessed("o-1", Decimal(45)), InventoryReserved("o-1", "book", 2))
        .when(InventoryReservationFailed("o-1", "lamp", "only 0 of lamp left"))
        .then_sends(
            ReleaseStock("o-1", "book"),
            RefundPayment("o-1"),
            CancelOrder("o-1", "out of stock: only 0 of lamp left"),
        )
    )


def test_late_arrivals_after_a_failure_are_given_back() -> None:
    failed = saga().given(CONFIRMED, PaymentFailed("o-1", "declined"))
    failed.when(InventoryReserved("o-1", "lamp", 1)).then_sends(ReleaseStock("o-1", "lamp"))
    (
        saga()
        .given(CONFIRMED, InventoryReservationFailed("o-1", "lamp", "none left"))
        .when(PaymentProcessed("o-1", Decimal(45)))
        .then_sends(RefundPayment("o-1"))
    )


def test_a_second_failure_compensates_nothing_twice() -> None:
    (
        saga()
        .given(CONFIRMED, PaymentFailed("o-1", "declined"))
        .when(InventoryReservationFailed("o-1", "lamp", "none left"))
        .then_sends()
    )


def test_the_payment_timeout_compensates_unless_paid() -> None:
    saga().given(CONFIRMED).when_timeout(PaymentOverdue("o-1")).then_sends(
        CancelOrder("o-1", "payment not received in time")
    )
    saga().given(CONFIRMED, PaymentProcessed("o-1", Decimal(45))).when_timeout(
        PaymentOverdue("o-1")
    ).then_sends()


def test_the_scenario_helper_fails_loudly() -> None:
    with pytest.raises(ScenarioFailure, match="commands differ"):
        saga().given(CONFIRMED).when(PaymentFailed("o-1", "x")).then_sends()
    with pytest.raises(ScenarioFailure, match="completed=True"):
        saga().when(CONFIRMED).then_completed()
    with pytest.raises(ScenarioFailure, match="when"):
        saga().then_sends()
    with pytest.raises(ScenarioFailure, match="does not handle"):
        saga().when(CancelOrder("o-1", "x")).then_sends()
