"""Who reacts to what, and when.

In the same transaction as the order:
* ``OrderStarted``: the buyer is registered if new (``ensure_buyer``).
* ``TicketEscalated``: the agent's response deadline is set (``set_response_deadline``), computed
  by the ``ResponseDeadlines`` domain service.

After commit, each subscriber independently (its own position, retries and dead letters):
* ``payments``, ``inventory``, ``shipping``, ``notifications`` react to ``OrderConfirmed``;
* ``commands`` carries out what the fulfilment saga decides (ship, cancel, refund, release);
* the saga itself is the subscriber ``saga.order-fulfilment``.

The loyalty rule lives in ``loyalty.py``: added purely as new handlers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from ordering.commands import CancelOrder, RefundPayment, ReleaseStock, ShipOrder
from ordering.domain.events import OrderConfirmed, OrderStarted, TicketEscalated
from ordering.domain.fulfilment import Mailbox, Payment, Shipment, StockItem
from ordering.domain.orders import Buyer, Order
from ordering.domain.support import Agent, Department, ResponseDeadlines, Ticket
from ordering.ports import Carrier, Notifier, PaymentGateway
from tidings import EventSourcedAggregate, HandlerContext, Handlers
from tidings.errors import StreamNotFound
from tidings.eventsourcing import EventSourcedRepository, EventStoreParticipant
from tidings.persistence.sql import SqlUnitOfWork

A = TypeVar("A", bound=EventSourcedAggregate)


@dataclass
class Services:
    """What handlers depend on, injected by the bootstrap (tests swap in their own)."""

    events: EventStoreParticipant
    payments: PaymentGateway
    notifier: Notifier
    carrier: Carrier
    departments: dict[str, Department]
    agents: dict[str, Agent]
    clock: Callable[[], datetime]

    def repository(self, ctx: HandlerContext) -> EventSourcedRepository:
        if not isinstance(ctx.uow, SqlUnitOfWork):
            raise TypeError("the ordering handlers run in a SQL unit of work")
        return EventSourcedRepository(ctx.uow, self.events)

    def load_or_new(
        self, ctx: HandlerContext, cls: type[A], id: str, create: Callable[[str], A] | None = None
    ) -> A:
        """The stored aggregate, or a new one (``create(id)``, by default a blank one)."""
        repository = self.repository(ctx)
        try:
            return repository.load(cls, id)
        except StreamNotFound:
            return repository.add(create(id) if create is not None else cls.blank(id))


def build_handlers(services: Services) -> Handlers:
    handlers = Handlers()

    # -- in the same transaction ----------------------------------------------------------

    @handlers.in_transaction(OrderStarted)
    def ensure_buyer(started: OrderStarted, ctx: HandlerContext) -> None:
        services.load_or_new(ctx, Buyer, started.buyer_id, create=Buyer.register)

    @handlers.in_transaction(TicketEscalated)
    def set_response_deadline(escalated: TicketEscalated, ctx: HandlerContext) -> None:
        ticket = services.repository(ctx).load(Ticket, escalated.ticket_id)
        department = services.departments[escalated.department]
        agent = services.agents[escalated.agent_id]
        respond_by = ResponseDeadlines().respond_by(ticket, department, agent, services.clock())
        ticket.set_response_deadline(respond_by)

    # -- after commit ---------------------------------------------------------------------

    @handlers.after_commit(OrderConfirmed, name="payments")
    def take_payment(confirmed: OrderConfirmed, ctx: HandlerContext) -> None:
        payment = services.load_or_new(ctx, Payment, confirmed.order_id)
        approved = services.payments.authorize(
            confirmed.buyer_id, confirmed.total, idempotency_key=ctx.delivery_id
        )
        payment.authorize(confirmed.total, card_ok=approved, reason="card declined")

    @handlers.after_commit(OrderConfirmed, name="inventory")
    def reserve_stock(confirmed: OrderConfirmed, ctx: HandlerContext) -> None:
        for line in confirmed.lines:
            item = services.load_or_new(ctx, StockItem, line.sku)
            if not item.reserve(confirmed.order_id, line.quantity):
                return  # the failure is recorded; the saga compensates

    @handlers.after_commit(OrderConfirmed, name="shipping")
    def arrange_shipping(confirmed: OrderConfirmed, ctx: HandlerContext) -> None:
        services.load_or_new(
            ctx,
            Shipment,
            confirmed.order_id,
            create=lambda order_id: Shipment.arrange(order_id, services.carrier.name),
        )

    @handlers.after_commit(OrderConfirmed, name="notifications")
    def tell_customer(confirmed: OrderConfirmed, ctx: HandlerContext) -> None:
        subject = f"Order {confirmed.order_id} is confirmed ({confirmed.total})"
        services.notifier.send(confirmed.buyer_id, subject, idempotency_key=ctx.delivery_id)
        services.load_or_new(ctx, Mailbox, confirmed.buyer_id).notified(subject, ctx.delivery_id)

    # -- the saga's commands --------------------------------------------------------------

    @handlers.after_commit(CancelOrder, name="commands")
    def cancel_order(command: CancelOrder, ctx: HandlerContext) -> None:
        services.repository(ctx).load(Order, command.order_id).cancel(command.reason)

    @handlers.after_commit(ShipOrder, name="commands")
    def ship_order(command: ShipOrder, ctx: HandlerContext) -> None:
        order = services.repository(ctx).load(Order, command.order_id)
        if order.status != "confirmed":
            return  # cancelled meanwhile: nothing to ship (the saga compensates that path)
        order.mark_shipped(f"{services.carrier.name}:{command.order_id}")

    @handlers.after_commit(RefundPayment, name="commands")
    def refund_payment(command: RefundPayment, ctx: HandlerContext) -> None:
        services.repository(ctx).load(Payment, command.order_id).refund()

    @handlers.after_commit(ReleaseStock, name="commands")
    def release_stock(command: ReleaseStock, ctx: HandlerContext) -> None:
        services.repository(ctx).load(StockItem, command.sku).release(command.order_id)

    return handlers
