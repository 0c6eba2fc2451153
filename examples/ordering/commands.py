"""Commands the fulfilment saga sends. Declared like events (stable names, versions), since they
travel through the outbox as messages."""

from __future__ import annotations

from tidings import event


@event(name="ordering.commands.CancelOrder")
class CancelOrder:
    order_id: str
    reason: str


@event(name="ordering.commands.RefundPayment")
class RefundPayment:
    order_id: str


@event(name="ordering.commands.ReleaseStock")
class ReleaseStock:
    order_id: str
    sku: str


@event(name="ordering.commands.ShipOrder")
class ShipOrder:
    order_id: str
