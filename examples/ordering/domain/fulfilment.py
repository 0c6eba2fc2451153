"""Payments, stock, shipping, notifications and loyalty: each its own small aggregate."""

from __future__ import annotations

from decimal import Decimal

from ordering.domain.events import (
    ConfirmedSpendRecorded,
    CustomerNotified,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    LoyaltyThresholdReached,
    PaymentFailed,
    PaymentProcessed,
    PaymentRefunded,
    ShippingArranged,
    StockAdded,
)
from tidings import EventSourcedAggregate, applies

#: Confirmed spend above which a buyer is loyal (issue: "exceed 6,000 in total").
LOYALTY_THRESHOLD = Decimal(6000)
LOYALTY_DISCOUNT_PERCENT = 10


class Payment(EventSourcedAggregate):
    """One payment per order (the stream id is the order id)."""

    id: str
    amount: Decimal
    status: str = "none"

    @classmethod
    def for_order(cls, order_id: str) -> Payment:
        return cls.blank(order_id)

    def authorize(self, amount: Decimal, *, card_ok: bool, reason: str = "") -> None:
        if self.status != "none":
            return  # already decided: a redelivered request changes nothing
        if card_ok:
            self.record(PaymentProcessed(self.id, amount))
        else:
            self.record(PaymentFailed(self.id, reason or "declined"))

    def refund(self) -> None:
        if self.status == "processed":
            self.record(PaymentRefunded(self.id, self.amount))

    @applies(PaymentProcessed)
    def _processed(self, event: PaymentProcessed) -> None:
        self.amount = event.amount
        self.status = "processed"

    @applies(PaymentFailed)
    def _failed(self, event: PaymentFailed) -> None:
        self.status = "failed"

    @applies(PaymentRefunded)
    def _refunded(self, event: PaymentRefunded) -> None:
        self.status = "refunded"


class StockItem(EventSourcedAggregate):
    """Stock of one SKU, and what each order holds of it."""

    id: str
    available: int = 0

    held: dict[str, int]

    @classmethod
    def blank(cls, id: object) -> StockItem:
        item = super().blank(id)
        item.available = 0
        item.held = {}
        return item

    def add(self, quantity: int) -> None:
        if quantity <= 0:
            raise ValueError("stock is added in positive quantities")
        self.record(StockAdded(self.id, quantity))

    def reserve(self, order_id: str, quantity: int) -> bool:
        if order_id in self.held:
            return True  # already reserved for this order
        if quantity > self.available:
            self.record(
                InventoryReservationFailed(
                    order_id, self.id, f"only {self.available} of {self.id} left"
                )
            )
            return False
        self.record(InventoryReserved(order_id, self.id, quantity))
        return True

    def release(self, order_id: str) -> None:
        quantity = self.held.get(order_id)
        if quantity:
            self.record(InventoryReleased(order_id, self.id, quantity))

    @applies(StockAdded)
    def _added(self, event: StockAdded) -> None:
        self.available += event.quantity

    @applies(InventoryReserved)
    def _reserved(self, event: InventoryReserved) -> None:
        self.available -= event.quantity
        self.held[event.order_id] = event.quantity

    @applies(InventoryReleased)
    def _released(self, event: InventoryReleased) -> None:
        self.available += event.quantity
        self.held.pop(event.order_id, None)


class Shipment(EventSourcedAggregate):
    id: str
    carrier: str = ""

    @classmethod
    def arrange(cls, order_id: str, carrier: str) -> Shipment:
        shipment = cls.blank(order_id)
        shipment.record(ShippingArranged(order_id, carrier))
        return shipment

    @applies(ShippingArranged)
    def _arranged(self, event: ShippingArranged) -> None:
        self.carrier = event.carrier


class Mailbox(EventSourcedAggregate):
    """What a buyer has been told; keyed by buyer. Keeps notifications idempotent."""

    id: str

    sent: set[str]

    @classmethod
    def blank(cls, id: object) -> Mailbox:
        mailbox = super().blank(id)
        mailbox.sent = set()
        return mailbox

    def notified(self, subject: str, delivery_id: str) -> None:
        if delivery_id not in self.sent:
            self.record(CustomerNotified(self.id, subject, delivery_id))

    @applies(CustomerNotified)
    def _notified(self, event: CustomerNotified) -> None:
        self.sent.add(event.delivery_id)


class LoyaltyAccount(EventSourcedAggregate):
    """A buyer's confirmed spend; reaching the threshold is recorded exactly once."""

    id: str
    total: Decimal = Decimal(0)
    loyal: bool = False

    counted: set[str]

    @classmethod
    def blank(cls, id: object) -> LoyaltyAccount:
        account = super().blank(id)
        account.total = Decimal(0)
        account.loyal = False
        account.counted = set()
        return account

    def record_confirmed_spend(self, order_id: str, amount: Decimal) -> None:
        if order_id in self.counted:
            return
        self.record(ConfirmedSpendRecorded(self.id, order_id, amount, self.total + amount))
        if not self.loyal and self.total > LOYALTY_THRESHOLD:
            self.record(LoyaltyThresholdReached(self.id, self.total))

    @applies(ConfirmedSpendRecorded)
    def _spent(self, event: ConfirmedSpendRecorded) -> None:
        self.total = event.total
        self.counted.add(event.order_id)

    @applies(LoyaltyThresholdReached)
    def _loyal(self, event: LoyaltyThresholdReached) -> None:
        self.loyal = True
