"""Orders and buyers: event-sourced aggregates."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from ordering.domain.events import (
    BuyerRegistered,
    OrderCancelled,
    OrderConfirmed,
    OrderDiscounted,
    OrderLine,
    OrderShipped,
    OrderStarted,
)
from tidings import EventSourcedAggregate, applies


class OrderRuleViolated(Exception):
    """A command broke one of the order's rules; nothing was recorded."""


CENT = Decimal("0.01")


class Order(EventSourcedAggregate):
    """started -> confirmed -> shipped, or cancelled before shipping."""

    id: str
    buyer_id: str
    lines: tuple[OrderLine, ...]
    total: Decimal
    status: str
    discount_percent: int

    @classmethod
    def start(cls, order_id: str, buyer_id: str, lines: tuple[OrderLine, ...]) -> Order:
        if not lines:
            raise OrderRuleViolated("an order needs at least one line")
        if any(line.quantity <= 0 or line.unit_price < 0 for line in lines):
            raise OrderRuleViolated("quantities must be positive and prices not negative")
        if len({line.sku for line in lines}) != len(lines):
            # Stock is held per order and SKU: one line per SKU keeps that unambiguous.
            raise OrderRuleViolated("each SKU may appear on one line only")
        order = cls.blank(order_id)
        total = sum((line.total for line in lines), Decimal(0)).quantize(CENT)
        order.record(OrderStarted(order_id, buyer_id, lines, total))
        return order

    def grant_discount(self, percent: int, reason: str) -> None:
        """Discounts can be granted while the order is being placed (before confirmation)."""
        if self.status != "started":
            raise OrderRuleViolated(f"order {self.id} is {self.status}: too late for discounts")
        if not 0 < percent < 100:
            raise OrderRuleViolated("a discount is between 1 and 99 percent")
        new_total = (self.total * (100 - percent) / 100).quantize(CENT, rounding=ROUND_HALF_UP)
        self.record(OrderDiscounted(self.id, percent, reason, new_total))

    def confirm(self) -> None:
        if self.status != "started":
            raise OrderRuleViolated(f"order {self.id} is {self.status}, it cannot be confirmed")
        self.record(OrderConfirmed(self.id, self.buyer_id, self.lines, self.total))

    def mark_shipped(self, tracking_code: str) -> None:
        if self.status != "confirmed":
            raise OrderRuleViolated(f"order {self.id} is {self.status}, it cannot ship")
        self.record(OrderShipped(self.id, tracking_code))

    def cancel(self, reason: str) -> None:
        if self.status == "cancelled":
            return  # cancelling twice is harmless: compensations may be retried
        if self.status == "shipped":
            raise OrderRuleViolated(f"order {self.id} has shipped, it cannot be cancelled")
        self.record(OrderCancelled(self.id, self.buyer_id, reason))

    @applies(OrderStarted)
    def _started(self, event: OrderStarted) -> None:
        self.buyer_id = event.buyer_id
        self.lines = event.lines
        self.total = event.total
        self.status = "started"
        self.discount_percent = 0

    @applies(OrderDiscounted)
    def _discounted(self, event: OrderDiscounted) -> None:
        self.total = event.total
        self.discount_percent = event.percent

    @applies(OrderConfirmed)
    def _confirmed(self, event: OrderConfirmed) -> None:
        self.status = "confirmed"

    @applies(OrderShipped)
    def _shipped(self, event: OrderShipped) -> None:
        self.status = "shipped"

    @applies(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> None:
        self.status = "cancelled"


class Buyer(EventSourcedAggregate):
    id: str

    @classmethod
    def register(cls, buyer_id: str) -> Buyer:
        buyer = cls.blank(buyer_id)
        buyer.record(BuyerRegistered(buyer_id))
        return buyer

    @applies(BuyerRegistered)
    def _registered(self, event: BuyerRegistered) -> None:
        pass
