"""The in-memory harness delivers after-commit subscribers right after commit, transactionally."""

from __future__ import annotations

import pytest

from tidings import Aggregate, HandlerContext, Handlers, UnitOfWorkError, event
from tidings.testing.harness import InMemoryHarness


@event(name="harness.Placed")
class Placed:
    order_id: str


@event(name="harness.Paid")
class Paid:
    order_id: str


class Order(Aggregate):
    def __init__(self, order_id: str) -> None:
        self.id = order_id
        self.paid = False
        self.record(Placed(order_id))

    def pay(self) -> None:
        self.paid = True
        self.record(Paid(self.id))


def build(fail_payment: bool = False) -> tuple[Handlers, list[str]]:
    handlers = Handlers()
    seen: list[str] = []

    @handlers.after_commit(Placed, name="payments")
    def take_payment(placed: Placed, ctx: HandlerContext) -> None:
        assert ctx.uow is not None
        order = ctx.uow.get(Order, placed.order_id)  # type: ignore[attr-defined]
        order.pay()
        if fail_payment:
            raise RuntimeError("card declined")
        seen.append(ctx.delivery_id)

    @handlers.after_commit(Paid, name="receipts")
    def send_receipt(paid: Paid) -> None:
        seen.append(f"receipt {paid.order_id}")

    return handlers, seen


def test_after_commit_subscribers_run_after_commit_and_cascade() -> None:
    handlers, seen = build()
    harness = InMemoryHarness(handlers)
    with harness.uow() as uow:
        uow.add(Order("o-1"))
        uow.commit()
    assert harness.types() == ["harness.Placed", "harness.Paid"]
    placed, paid = harness.events
    assert seen == [f"payments:{placed.event_id}", "receipt o-1"]
    assert paid.causation_id == placed.event_id
    assert paid.correlation_id == placed.correlation_id
    stored = harness.store.stored(Order, "o-1")
    assert stored is not None and stored.paid


def test_a_failing_subscriber_rolls_back_its_own_work_only() -> None:
    handlers, _ = build(fail_payment=True)
    harness = InMemoryHarness(handlers, raise_errors=False)
    with harness.uow() as uow:
        uow.add(Order("o-1"))
        uow.commit()
    assert harness.types() == ["harness.Placed"]  # the order itself is committed
    stored = harness.store.stored(Order, "o-1")
    assert stored is not None and not stored.paid
    [failure] = harness.failures
    assert failure.subscriber == "payments" and "declined" in str(failure.error)


def test_failures_are_raised_by_default_with_a_note() -> None:
    handlers, _ = build(fail_payment=True)
    harness = InMemoryHarness(handlers)
    with harness.uow() as uow:
        uow.add(Order("o-1"))
        with pytest.raises(RuntimeError, match="declined") as caught:
            uow.commit()
    assert "after-commit subscriber payments" in caught.value.__notes__[-1]


def test_endless_subscriber_loops_are_bounded() -> None:
    handlers = Handlers()

    @handlers.after_commit(Placed, name="echo")
    def echo(placed: Placed, ctx: HandlerContext) -> None:
        assert ctx.uow is not None
        ctx.uow.add(Order(placed.order_id + "+"))  # type: ignore[attr-defined]

    harness = InMemoryHarness(handlers, max_deliveries=50)
    with harness.uow() as uow:
        uow.add(Order("o"))
        with pytest.raises(UnitOfWorkError, match="more than 50"):
            uow.commit()
