"""The reference application's domain, tested with tidings' given/when/then helpers."""

from __future__ import annotations

from datetime import UTC, datetime, time
from decimal import Decimal

import pytest

from ordering.domain.events import (
    ConfirmedSpendRecorded,
    InventoryReservationFailed,
    InventoryReserved,
    LoyaltyThresholdReached,
    OrderCancelled,
    OrderConfirmed,
    OrderDiscounted,
    OrderLine,
    OrderStarted,
    StockAdded,
    TicketEscalated,
    TicketOpened,
)
from ordering.domain.fulfilment import LoyaltyAccount, StockItem
from ordering.domain.orders import Order, OrderRuleViolated
from ordering.domain.support import Agent, Department, ResponseDeadlines, Ticket
from tidings.testing.scenarios import AggregateScenario

LINE = OrderLine("sku-1", 2, Decimal("50.00"))
STARTED = OrderStarted("o-1", "ada", (LINE,), Decimal("100.00"))


def test_starting_an_order_totals_its_lines() -> None:
    order = Order.start("o-1", "ada", (LINE,))
    assert [e.event for e in order.pending_events] == [STARTED]


@pytest.mark.parametrize(
    "lines",
    [
        (),
        (OrderLine("x", 0, Decimal(1)),),
        (OrderLine("x", 1, Decimal(-1)),),
        (OrderLine("x", 1, Decimal(1)), OrderLine("x", 2, Decimal(1))),
    ],
)
def test_orders_reject_bad_lines(lines: tuple[OrderLine, ...]) -> None:
    with pytest.raises(OrderRuleViolated):
        Order.start("o-1", "ada", lines)


def test_discounts_only_before_confirmation() -> None:
    (
        AggregateScenario(Order, id="o-1")
        .given(STARTED)
        .when(lambda order: order.grant_discount(10, "loyalty"))
        .then(OrderDiscounted("o-1", 10, "loyalty", Decimal("90.00")))
    )
    (
        AggregateScenario(Order, id="o-1")
        .given(STARTED, OrderConfirmed("o-1", "ada", (LINE,), Decimal("100.00")))
        .when(lambda order: order.grant_discount(10, "loyalty"))
        .then_raises(OrderRuleViolated, match="too late")
    )


def test_confirming_carries_the_discounted_total() -> None:
    (
        AggregateScenario(Order, id="o-1")
        .given(STARTED, OrderDiscounted("o-1", 10, "loyalty", Decimal("90.00")))
        .when(Order.confirm)
        .then(OrderConfirmed("o-1", "ada", (LINE,), Decimal("90.00")))
    )


def test_cancel_is_idempotent_and_impossible_after_shipping() -> None:
    cancelled = OrderCancelled("o-1", "ada", "payment failed")
    (
        AggregateScenario(Order, id="o-1")
        .given(STARTED, cancelled)
        .when(lambda order: order.cancel("again"))
        .then_nothing()
    )
    (
        AggregateScenario(Order, id="o-1")
        .given(STARTED)
        .when(lambda order: order.cancel("payment failed"))
        .then(cancelled)
    )


def test_stock_reservation_succeeds_or_records_the_failure() -> None:
    (
        AggregateScenario(StockItem, id="sku-1")
        .given(StockAdded("sku-1", 3))
        .when(lambda item: item.reserve("o-1", 2))
        .then(InventoryReserved("o-1", "sku-1", 2))
        .then_state(lambda item: item.available == 1)
    )
    (
        AggregateScenario(StockItem, id="sku-1")
        .given(StockAdded("sku-1", 1))
        .when(lambda item: item.reserve("o-1", 2))
        .then(InventoryReservationFailed("o-1", "sku-1", "only 1 of sku-1 left"))
    )


def test_loyalty_threshold_is_reached_once() -> None:
    (
        AggregateScenario(LoyaltyAccount, id="ada")
        .given(ConfirmedSpendRecorded("ada", "o-1", Decimal(6000), Decimal(6000)))
        .when(lambda account: account.record_confirmed_spend("o-2", Decimal("0.01")))
        .then(
            ConfirmedSpendRecorded("ada", "o-2", Decimal("0.01"), Decimal("6000.01")),
            LoyaltyThresholdReached("ada", Decimal("6000.01")),
        )
    )
    (
        AggregateScenario(LoyaltyAccount, id="ada")
        .given(
            ConfirmedSpendRecorded("ada", "o-1", Decimal(7000), Decimal(7000)),
            LoyaltyThresholdReached("ada", Decimal(7000)),
        )
        .when(lambda account: account.record_confirmed_spend("o-2", Decimal(10)))
        .then(ConfirmedSpendRecorded("ada", "o-2", Decimal(10), Decimal(7010)))
    )


def test_exactly_the_threshold_is_not_loyal_yet() -> None:
    (
        AggregateScenario(LoyaltyAccount, id="ada")
        .when(lambda account: account.record_confirmed_spend("o-1", Decimal(6000)))
        .then(ConfirmedSpendRecorded("ada", "o-1", Decimal(6000), Decimal(6000)))
    )


OPENED = TicketOpened("t-1", "billing", "agent-7", 3, "invoice wrong")
BILLING = Department("billing", {1: 2, 2: 4, 3: 8, 4: 24})
DAY_SHIFT = Agent("agent-7", time(9), time(17))


def test_escalation_raises_priority() -> None:
    (
        AggregateScenario(Ticket, id="t-1")
        .given(OPENED)
        .when(lambda ticket: ticket.escalate("customer waited"))
        .then(TicketEscalated("t-1", "billing", "agent-7", 2, "customer waited"))
    )


def test_response_deadline_counts_only_shift_hours() -> None:
    ticket = Ticket.replay("t-1", [OPENED, TicketEscalated("t-1", "billing", "agent-7", 2, "x")])
    service = ResponseDeadlines()
    # Wednesday 15:00: 2 hours left today, 2 more from Thursday 09:00.
    wednesday = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
    assert service.respond_by(ticket, BILLING, DAY_SHIFT, wednesday) == datetime(
        2026, 11, 26, 11, 0, tzinfo=UTC
    )
    # Friday 16:00: 1 hour today, then the weekend is skipped: Monday 12:00.
    friday = datetime(2026, 11, 27, 16, 0, tzinfo=UTC)
    assert service.respond_by(ticket, BILLING, DAY_SHIFT, friday) == datetime(
        2026, 11, 30, 12, 0, tzinfo=UTC
    )
    # Before the shift starts, the clock starts at 09:00.
    early = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
    assert service.respond_by(ticket, BILLING, DAY_SHIFT, early) == datetime(
        2026, 11, 25, 13, 0, tzinfo=UTC
    )


def test_response_deadline_rejects_mismatched_inputs() -> None:
    ticket = Ticket.replay("t-1", [OPENED])
    with pytest.raises(ValueError, match="ticket's own"):
        ResponseDeadlines().respond_by(
            ticket, Department("sales", {3: 1}), DAY_SHIFT, datetime.now(UTC)
        )
    with pytest.raises(ValueError, match="no SLA"):
        ResponseDeadlines().respond_by(
            ticket, Department("billing", {1: 1}), DAY_SHIFT, datetime.now(UTC)
        )
