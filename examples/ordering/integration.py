"""The published language: what the ordering service tells other services, on the ``shipping`` bus.

Domain events stay private. The shipping context (another team, another service) receives only
these public, versioned integration events, translated here and allowed by the publish policy.
``tidings schema export --app ordering.integration:worker`` writes their JSON Schema and an
AsyncAPI document for that team.
"""

from __future__ import annotations

import os

from ordering.domain.events import OrderCancelled, OrderConfirmed
from tidings.brokers.port import Topology
from tidings.integration.policy import PublishPolicy
from tidings.integration.translator import Translator, integration_event

# Overridable so that test runs (and staging environments) get a bus of their own.
SHIPPING_BUS = os.environ.get("ORDERING_SHIPPING_BUS", "shipping")
SHIPPING_TOPOLOGY = Topology(name=SHIPPING_BUS, groups=("shipping-context",), partitions=4)


@integration_event(name="ordering.public.ShipmentRequested", version=1)
class ShipmentRequestedV1:
    order_id: str
    items: tuple[tuple[str, int], ...]  # (sku, quantity)


@integration_event(name="ordering.public.ShipmentWithdrawn", version=1)
class ShipmentWithdrawnV1:
    order_id: str
    reason: str


shipping = Translator(SHIPPING_BUS)


@shipping.maps(OrderConfirmed, to=ShipmentRequestedV1)
def shipment_requested(confirmed: OrderConfirmed) -> ShipmentRequestedV1:
    items = tuple((line.sku, line.quantity) for line in confirmed.lines)
    return ShipmentRequestedV1(confirmed.order_id, items)


@shipping.maps(OrderCancelled, to=ShipmentWithdrawnV1)
def shipment_withdrawn(cancelled: OrderCancelled) -> ShipmentWithdrawnV1:
    return ShipmentWithdrawnV1(cancelled.order_id, cancelled.reason)


#: Who may say what: only the ordering service, only these two events, only on this bus.
policy = PublishPolicy().allow("ordering", SHIPPING_BUS, ShipmentRequestedV1, ShipmentWithdrawnV1)
