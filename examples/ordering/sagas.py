"""The order fulfilment saga: compensation when payment or stock fails, and a payment timeout.

It starts when an order is confirmed, remembers what stock was reserved, ships the order once it
is paid and every line is reserved, and when payment fails
or stock cannot be reserved, it cancels the order, refunds the payment if one was taken, and
releases every reservation already made. If payment has not been decided within the timeout, it
compensates the same way.

A failed instance is deliberately never completed: stock reserved or a payment taken *after*
the failure (the subscribers run independently) must still be given back, and a completed saga
would ignore them. Every event type starts the saga because the subscribers may be delivered in
any order relative to one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from ordering.commands import CancelOrder, RefundPayment, ReleaseStock, ShipOrder
from ordering.domain.events import (
    InventoryReservationFailed,
    InventoryReserved,
    OrderConfirmed,
    PaymentFailed,
    PaymentProcessed,
)
from tidings import event
from tidings.sagas import Saga, on_timeout, starts

PAYMENT_TIMEOUT = timedelta(minutes=15)


@event(name="ordering.timeouts.PaymentOverdue")
class PaymentOverdue:
    order_id: str


@dataclass
class FulfilmentState:
    lines: dict[str, int] = field(default_factory=dict)
    reserved: list[str] = field(default_factory=list)
    paid: bool = False
    failed: bool = False


class OrderFulfilment(Saga[FulfilmentState]):
    name = "order-fulfilment"
    state_type = FulfilmentState

    @starts(OrderConfirmed, by="order_id")
    def confirmed(self, event: OrderConfirmed) -> None:
        self.state.lines = {line.sku: line.quantity for line in event.lines}
        if self.state.failed:
            return
        if not self.state.paid:
            self.schedule(PaymentOverdue(event.order_id), after=PAYMENT_TIMEOUT)
        # Payment and stock live in other streams: they may well have arrived first.
        self._maybe_done()

    @starts(InventoryReserved, by="order_id")
    def reserved(self, event: InventoryReserved) -> None:
        if self.state.failed:
            # Reserved after we already gave up: give it straight back.
            self.send(ReleaseStock(self.key, event.sku))
            return
        self.state.reserved.append(event.sku)
        self._maybe_done()

    @starts(PaymentProcessed, by="order_id")
    def paid(self, event: PaymentProcessed) -> None:
        self.state.paid = True
        self.cancel_timeouts()
        if self.state.failed:
            self.send(RefundPayment(self.key))
            return
        self._maybe_done()

    @starts(PaymentFailed, by="order_id")
    def payment_failed(self, event: PaymentFailed) -> None:
        self._compensate(f"payment failed: {event.reason}")

    @starts(InventoryReservationFailed, by="order_id")
    def stock_failed(self, event: InventoryReservationFailed) -> None:
        self._compensate(f"out of stock: {event.reason}")

    @on_timeout(PaymentOverdue)
    def overdue(self, timeout: PaymentOverdue) -> None:
        if not self.state.paid:
            self._compensate("payment not received in time")

    def _compensate(self, reason: str) -> None:
        if self.state.failed:
            return
        self.state.failed = True
        self.cancel_timeouts()
        for sku in self.state.reserved:
            self.send(ReleaseStock(self.key, sku))
        self.state.reserved.clear()
        if self.state.paid:
            self.send(RefundPayment(self.key))
        self.send(CancelOrder(self.key, reason))

    def _maybe_done(self) -> None:
        if (
            self.state.lines
            and self.state.paid
            and set(self.state.reserved) >= set(self.state.lines)
        ):
            self.send(ShipOrder(self.key))
            self.complete()
