"""Every domain event of the application, grouped by the part of the business that owns it.

These are *private* to the ordering service. What other services see are the integration
events in ``ordering.integration``, translated from these.
"""

from __future__ import annotations

from decimal import Decimal

from tidings import event


@event(name="ordering.OrderLine")
class OrderLine:
    """A value object carried inside order events (declared so it has a stable schema)."""

    sku: str
    quantity: int
    unit_price: Decimal

    @property
    def total(self) -> Decimal:
        return self.unit_price * self.quantity


# -- ordering ------------------------------------------------------------------------------


@event(name="ordering.OrderStarted")
class OrderStarted:
    order_id: str
    buyer_id: str
    lines: tuple[OrderLine, ...]
    total: Decimal


@event(name="ordering.OrderDiscounted")
class OrderDiscounted:
    order_id: str
    percent: int
    reason: str
    total: Decimal


@event(name="ordering.OrderConfirmed")
class OrderConfirmed:
    order_id: str
    buyer_id: str
    lines: tuple[OrderLine, ...]
    total: Decimal


@event(name="ordering.OrderShipped")
class OrderShipped:
    order_id: str
    tracking_code: str


@event(name="ordering.OrderCancelled")
class OrderCancelled:
    order_id: str
    buyer_id: str
    reason: str


@event(name="ordering.BuyerRegistered")
class BuyerRegistered:
    buyer_id: str


# -- payments ------------------------------------------------------------------------------


@event(name="payments.PaymentProcessed")
class PaymentProcessed:
    order_id: str
    amount: Decimal


@event(name="payments.PaymentFailed")
class PaymentFailed:
    order_id: str
    reason: str


@event(name="payments.PaymentRefunded")
class PaymentRefunded:
    order_id: str
    amount: Decimal


# -- inventory -----------------------------------------------------------------------------


@event(name="inventory.InventoryReserved")
class InventoryReserved:
    order_id: str
    sku: str
    quantity: int


@event(name="inventory.InventoryReservationFailed")
class InventoryReservationFailed:
    order_id: str
    sku: str
    reason: str


@event(name="inventory.InventoryReleased")
class InventoryReleased:
    order_id: str
    sku: str
    quantity: int


@event(name="inventory.StockAdded")
class StockAdded:
    sku: str
    quantity: int


# -- shipping & notification ---------------------------------------------------------------


@event(name="shipping.ShippingArranged")
class ShippingArranged:
    order_id: str
    carrier: str


@event(name="notifications.CustomerNotified")
class CustomerNotified:
    buyer_id: str
    subject: str
    delivery_id: str


# -- loyalty -------------------------------------------------------------------------------


@event(name="loyalty.ConfirmedSpendRecorded")
class ConfirmedSpendRecorded:
    buyer_id: str
    order_id: str
    amount: Decimal
    total: Decimal


@event(name="loyalty.LoyaltyThresholdReached")
class LoyaltyThresholdReached:
    buyer_id: str
    total: Decimal


# -- support desk --------------------------------------------------------------------------


@event(name="support.TicketOpened")
class TicketOpened:
    ticket_id: str
    department: str
    agent_id: str
    priority: int
    subject: str


@event(name="support.TicketEscalated")
class TicketEscalated:
    ticket_id: str
    department: str
    agent_id: str
    priority: int
    reason: str


@event(name="support.ResponseDeadlineSet")
class ResponseDeadlineSet:
    ticket_id: str
    agent_id: str
    respond_by: str  # ISO 8601, UTC
