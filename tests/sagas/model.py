"""A small order-fulfilment saga used by the saga tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from tidings import event
from tidings.sagas import Saga, handles, on_timeout, starts


@event(name="sagatest.OrderConfirmed")
class OrderConfirmed:
    order_id: str
    items: tuple[str, ...]


@event(name="sagatest.StockReserved")
class StockReserved:
    order_id: str
    sku: str


@event(name="sagatest.PaymentFailed")
class PaymentFailed:
    order_id: str
    reason: str


@event(name="sagatest.PaymentSucceeded")
class PaymentSucceeded:
    order_id: str


@event(name="sagatest.PaymentOverdue")
class PaymentOverdue:
    order_id: str


@event(name="sagatest.CancelOrder")
class CancelOrder:
    order_id: str
    reason: str


@event(name="sagatest.ReleaseStock")
class ReleaseStock:
    order_id: str
    sku: str


@event(name="sagatest.AuthorizePayment")
class AuthorizePayment:
    order_id: str


@dataclass
class FulfilmentState:
    reserved: list[str] = field(default_factory=list)
    paid: bool = False
    events_seen: int = 0


class OrderFulfilment(Saga[FulfilmentState]):
    name = "test-order-fulfilment"
    state_type = FulfilmentState

    @starts(OrderConfirmed, by="order_id")
    def confirmed(self, event: OrderConfirmed) -> None:
        self.state.events_seen += 1
        self.send(AuthorizePayment(event.order_id))
        self.schedule(PaymentOverdue(event.order_id), after=timedelta(minutes=15))

    @starts(StockReserved, by="order_id")
    def reserved(self, event: StockReserved) -> None:
        self.state.events_seen += 1
        self.state.reserved.append(event.sku)

    @handles(PaymentSucceeded, by="order_id")
    def paid(self, event: PaymentSucceeded) -> None:
        self.state.events_seen += 1
        self.state.paid = True
        self.cancel_timeouts()
        self.complete()

    @handles(PaymentFailed, by="order_id")
    def payment_failed(self, event: PaymentFailed) -> None:
        self.compensate(event.reason)

    @on_timeout(PaymentOverdue)
    def overdue(self, timeout: PaymentOverdue) -> None:
        self.compensate("payment overdue")

    def compensate(self, reason: str) -> None:
        for sku in self.state.reserved:
            self.send(ReleaseStock(self.key, sku))
        self.send(CancelOrder(self.key, reason))
        self.complete()
