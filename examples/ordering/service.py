"""The service layer: one function per use case, each one unit of work.

The HTTP API and the demo call these; neither touches aggregates or sessions directly.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, TypeVar

from ordering.bootstrap import OrderingApp
from ordering.domain.events import OrderLine
from ordering.domain.fulfilment import StockItem
from ordering.domain.orders import Order
from ordering.domain.support import Ticket
from tidings import EventSourcedAggregate
from tidings.errors import StreamNotFound
from tidings.persistence.sql import SqlUnitOfWork


class NotFound(Exception):
    pass


A = TypeVar("A", bound=EventSourcedAggregate)


def _load(app: OrderingApp, uow: SqlUnitOfWork, cls: type[A], id: str, what: str) -> A:
    try:
        return app.repository(uow).load(cls, id)
    except StreamNotFound:
        raise NotFound(f"no {what} {id!r}") from None


def place_order(app: OrderingApp, order_id: str, buyer_id: str, lines: list[dict[str, Any]]) -> str:
    order_lines = tuple(
        OrderLine(str(line["sku"]), int(line["quantity"]), Decimal(str(line["unit_price"])))
        for line in lines
    )
    with app.unit_of_work() as uow:
        app.repository(uow).add(Order.start(order_id, buyer_id, order_lines))
        uow.commit()
    return order_id


def _change_order(app: OrderingApp, order_id: str, change: str, *args: Any) -> None:
    with app.unit_of_work() as uow:
        order = _load(app, uow, Order, order_id, "order")
        getattr(order, change)(*args)
        uow.commit()


def confirm_order(app: OrderingApp, order_id: str) -> None:
    _change_order(app, order_id, "confirm")


def cancel_order(app: OrderingApp, order_id: str, reason: str) -> None:
    _change_order(app, order_id, "cancel", reason)


def add_stock(app: OrderingApp, sku: str, quantity: int) -> None:
    with app.unit_of_work() as uow:
        repository = app.repository(uow)
        try:
            item = repository.load(StockItem, sku)
        except StreamNotFound:
            item = repository.add(StockItem.blank(sku))
        item.add(quantity)
        uow.commit()


def open_ticket(
    app: OrderingApp, ticket_id: str, department: str, agent_id: str, priority: int, subject: str
) -> None:
    with app.unit_of_work() as uow:
        app.repository(uow).add(Ticket.open(ticket_id, department, agent_id, priority, subject))
        uow.commit()


def escalate_ticket(app: OrderingApp, ticket_id: str, reason: str) -> None:
    with app.unit_of_work() as uow:
        ticket = _load(app, uow, Ticket, ticket_id, "ticket")
        ticket.escalate(reason)
        uow.commit()


def order_state(app: OrderingApp, order_id: str) -> dict[str, Any]:
    with app.unit_of_work() as uow:
        order = _load(app, uow, Order, order_id, "order")
    return {
        "order_id": order_id,
        "buyer_id": order.buyer_id,
        "status": order.status,
        "total": str(order.total),
        "discount_percent": order.discount_percent,
        "version": order.version,
        "lines": [
            {"sku": line.sku, "quantity": line.quantity, "unit_price": str(line.unit_price)}
            for line in order.lines
        ],
    }


def order_history(app: OrderingApp, order_id: str) -> list[dict[str, Any]]:
    entries = app.store.read_stream(f"{Order.category()}-{order_id}")
    if not entries:
        raise NotFound(f"no order {order_id!r}")
    return [
        {
            "version": entry.event.stream_version,
            "type": entry.event.event_type,
            "event_id": str(entry.event.event_id),
            "occurred_at": entry.event.occurred_at.isoformat(),
            "causation_id": str(entry.event.causation_id) if entry.event.causation_id else None,
            "correlation_id": str(entry.event.correlation_id),
        }
        for entry in entries
    ]


def ticket_state(app: OrderingApp, ticket_id: str) -> dict[str, Any]:
    with app.unit_of_work() as uow:
        ticket = _load(app, uow, Ticket, ticket_id, "ticket")
    return {
        "ticket_id": ticket_id,
        "department": ticket.department,
        "agent_id": ticket.agent_id,
        "priority": ticket.priority,
        "escalations": ticket.escalations,
        "respond_by": ticket.respond_by,
    }
