"""A small application with integration events, used by the translator, policy, schema and CLI
tests (and loadable with ``--app tests.brokers.integration_app:...``)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from tidings._demo import OrderStarted
from tidings.brokers.memory import MemoryBroker
from tidings.brokers.port import Topology
from tidings.brokers.worker import BrokerSubscription, Worker
from tidings.integration.protection import Sensitive
from tidings.integration.translator import Translator, integration_event


@integration_event(name="public.orders.OrderOpened", version=1)
class OrderOpenedV1:
    order_id: str
    total: str


@integration_event(name="public.orders.OrderOpened", version=2)
class OrderOpenedV2:
    order_id: str
    buyer: Annotated[str, Sensitive(subject="order_id")]
    total: Decimal


orders_bus = Translator("orders")


@orders_bus.maps(OrderStarted, to=OrderOpenedV1)
def order_opened_v1(started: OrderStarted) -> OrderOpenedV1:
    return OrderOpenedV1(order_id=started.order_id, total=str(started.total))


@orders_bus.maps(OrderStarted, to=OrderOpenedV2)
def order_opened_v2(started: OrderStarted) -> OrderOpenedV2:
    return OrderOpenedV2(order_id=started.order_id, buyer=started.buyer_id, total=started.total)


ORDERS = Topology(name="orders", groups=("billing",), partitions=2)


async def _ignore(delivery: object) -> None:
    return None


def build_worker() -> Worker:
    return Worker(
        [BrokerSubscription(broker=lambda: MemoryBroker(ORDERS), group="billing", handler=_ignore)],
        translators=[orders_bus],
    )


worker = build_worker()
