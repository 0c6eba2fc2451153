"""The demo behind ``tidings demo``: the transactional heart of tidings on one SQLite file.

1. An order is started. In the same transaction, an in-transaction handler of ``OrderStarted``
   creates the buyer. Both commit together.
2. A second order for a new buyer is started while a fraud check (another in-transaction handler)
   rejects it. The buyer created by the first handler is rolled back with the order: nothing of
   the attempt is stored, and the order's events stay pending.

Only the public API is used. The full reference application (examples/ordering) supersedes this.
"""

from __future__ import annotations

import json
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tidings import Aggregate, Envelope, HandlerContext, Handlers, event
from tidings.persistence.sql import SqlUnitOfWork
from tidings.persistence.sqlite import sqlite_engine


class Base(DeclarativeBase):
    pass


@event(name="demo.OrderStarted")
class OrderStarted:
    order_id: str
    buyer_id: str
    total: Decimal


@event(name="demo.BuyerCreated")
class BuyerCreated:
    buyer_id: str


class FraudSuspected(Exception):
    pass


class Order(Base, Aggregate):
    __tablename__ = "demo_orders"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    buyer_id: Mapped[str] = mapped_column(String)
    total: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String)
    version: Mapped[int] = mapped_column(default=0)

    @classmethod
    def start(cls, order_id: str, buyer_id: str, total: Decimal) -> Order:
        order = cls(id=order_id, buyer_id=buyer_id, total=str(total), status="started", version=0)
        order.record(OrderStarted(order_id=order_id, buyer_id=buyer_id, total=total))
        return order


class Buyer(Base, Aggregate):
    __tablename__ = "demo_buyers"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    version: Mapped[int] = mapped_column(default=0)

    @classmethod
    def create(cls, buyer_id: str) -> Buyer:
        buyer = cls(id=buyer_id, version=0)
        buyer.record(BuyerCreated(buyer_id=buyer_id))
        return buyer


def build_handlers(timeline: list[dict[str, Any]], reject: set[str]) -> Handlers:
    handlers = Handlers()

    def note(envelope: Envelope[Any], what: str) -> None:
        timeline.append(
            {
                "what": what,
                "event": envelope.event_type,
                "event_id": str(envelope.event_id),
                "stream": envelope.stream_id,
                "version": envelope.stream_version,
                "causation_id": str(envelope.causation_id) if envelope.causation_id else None,
                "correlation_id": str(envelope.correlation_id),
            }
        )

    @handlers.in_transaction(OrderStarted)
    def create_buyer(started: OrderStarted, ctx: HandlerContext) -> None:
        note(ctx.envelope, "handled in transaction by create_buyer")
        assert ctx.uow is not None
        uow: SqlUnitOfWork = ctx.uow  # type: ignore[assignment]
        if uow.get(Buyer, started.buyer_id) is None:
            uow.add(Buyer.create(started.buyer_id))

    @handlers.in_transaction(BuyerCreated)
    def log_buyer(created: BuyerCreated, ctx: HandlerContext) -> None:
        note(ctx.envelope, "handled in transaction by log_buyer")

    @handlers.in_transaction(OrderStarted)
    def fraud_check(started: OrderStarted, ctx: HandlerContext) -> None:
        if started.order_id in reject:
            note(ctx.envelope, "REJECTED by fraud_check: the whole transaction rolls back")
            raise FraudSuspected(f"order {started.order_id} looks fraudulent")

    return handlers


def _count(uow: SqlUnitOfWork, model: type[Base]) -> int:
    return int(uow.session.scalar(select(func.count()).select_from(model)) or 0)


def run_demo(database: str | None = None, *, as_json: bool = False) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(database) if database else Path(tmp) / "tidings-demo.sqlite"
        engine = sqlite_engine(path)
        # The demo owns its two tables: start from empty ones so --database can be reused.
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        timeline: list[dict[str, Any]] = []
        handlers = build_handlers(timeline, reject={"order-2"})
        uow = SqlUnitOfWork(engine, handlers, producer="demo")

        with uow:
            first = uow.add(Order.start("order-1", "alice", Decimal("120.00")))
            uow.commit()
        timeline.append({"what": "COMMITTED order-1 and buyer alice together"})

        second = Order.start("order-2", "mallory", Decimal("9999.99"))
        error = ""
        with uow:
            uow.add(second)
            try:
                uow.commit()
            except FraudSuspected as exc:
                error = str(exc)
        timeline.append({"what": f"ROLLED BACK: {error}"})

        with uow:
            orders, buyers = _count(uow, Order), _count(uow, Buyer)
            mallory = uow.get(Buyer, "mallory")
        engine.dispose()

    checks = {
        "order-1 and its buyer committed": orders == 1 and buyers == 1,
        "mallory was rolled back with order-2": mallory is None,
        "order-1 events cleared after commit": not first.pending_events,
        "order-2 events still pending after rollback": len(second.pending_events) == 1,
    }
    ok = all(checks.values())
    if as_json:
        print(json.dumps({"timeline": timeline, "checks": checks, "ok": ok}, indent=2))
        return ok
    print("tidings demo: one SQLite file, one unit of work per command\n")
    for step, entry in enumerate(timeline, 1):
        if "event" not in entry:
            print(f"{step:>2}. {entry['what']}")
            continue
        cause = entry["causation_id"][-8:] if entry["causation_id"] else "(command)"
        print(
            f"{step:>2}. {entry['event']:<20} {entry['stream']}@{entry['version']}  "
            f"id={entry['event_id'][-8:]} caused-by={cause} "
            f"corr={entry['correlation_id'][-8:]}\n      {entry['what']}"
        )
    print("\nchecks:")
    for name, passed in checks.items():
        print(f"  [{'ok' if passed else 'FAIL'}] {name}")
    return ok
