"""The loyalty rule, added purely as new handlers: the ``Order`` aggregate is not touched.

When a buyer's confirmed orders exceed 6,000 in total, every new order gets 10% off, and the
buyer is told once.

* after commit, ``loyalty`` keeps each buyer's confirmed spend (``LoyaltyAccount``); crossing
  the threshold records ``LoyaltyThresholdReached`` exactly once;
* after commit, ``loyalty-notifications`` tells the buyer, once;
* in the same transaction as a new order, ``loyal_discount`` grants the discount, so the order is
  never seen without it.
"""

from __future__ import annotations

from ordering.domain.events import LoyaltyThresholdReached, OrderConfirmed, OrderStarted
from ordering.domain.fulfilment import LOYALTY_DISCOUNT_PERCENT, LoyaltyAccount, Mailbox
from ordering.domain.orders import Order
from ordering.handlers import Services
from tidings import HandlerContext, Handlers
from tidings.errors import StreamNotFound


def add_loyalty_rule(handlers: Handlers, services: Services) -> None:
    @handlers.after_commit(OrderConfirmed, name="loyalty")
    def count_spend(confirmed: OrderConfirmed, ctx: HandlerContext) -> None:
        account = services.load_or_new(ctx, LoyaltyAccount, confirmed.buyer_id)
        account.record_confirmed_spend(confirmed.order_id, confirmed.total)

    @handlers.after_commit(LoyaltyThresholdReached, name="loyalty-notifications")
    def congratulate(reached: LoyaltyThresholdReached, ctx: HandlerContext) -> None:
        subject = f"Thank you! From now on every order gets {LOYALTY_DISCOUNT_PERCENT}% off"
        services.notifier.send(reached.buyer_id, subject, idempotency_key=ctx.delivery_id)
        services.load_or_new(ctx, Mailbox, reached.buyer_id).notified(subject, ctx.delivery_id)

    @handlers.in_transaction(OrderStarted)
    def loyal_discount(started: OrderStarted, ctx: HandlerContext) -> None:
        repository = services.repository(ctx)
        try:
            account = repository.load(LoyaltyAccount, started.buyer_id)
        except StreamNotFound:
            return
        if account.loyal:
            order = repository.load(Order, started.order_id)  # the one being placed
            order.grant_discount(LOYALTY_DISCOUNT_PERCENT, "loyal customer")
