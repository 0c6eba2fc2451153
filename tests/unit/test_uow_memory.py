"""The unit of work on the in-memory store, synchronous and asyncio: one set of rules for both.

Every test runs twice, through :class:`Mode`, which hides only *how* the unit of work is driven
(``with``/``commit()`` or ``async with``/``await commit()``) and how a handler loads an aggregate.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pytest

from tidings import (
    Aggregate,
    AsyncInMemoryUnitOfWork,
    CascadeLimitExceeded,
    Envelope,
    HandlerContext,
    Handlers,
    InMemoryStore,
    InMemoryUnitOfWork,
    Timing,
    UnitOfWorkError,
    event,
    recording_context,
    uuid7,
)
from tidings.core.envelope import caused_by, current_recording_context, restore


@event(name="uow-test.Started")
class Started:
    order_id: str


@event(name="uow-test.BuyerCreated")
class BuyerCreated:
    buyer_id: str


@event(name="uow-test.Welcomed")
class Welcomed:
    buyer_id: str


@event(name="uow-test.Ping")
class Ping:
    n: int


@event(name="uow-test.Pong")
class Pong:
    n: int


@event(name="uow-test.Countdown")
class Countdown:
    n: int


class Order(Aggregate):
    def __init__(self, id: str) -> None:
        self.id = id
        self.status = "new"

    def start(self) -> Order:
        self.status = "started"
        self.record(Started(self.id))
        return self


class Buyer(Aggregate):
    def __init__(self, id: str) -> None:
        self.id = id
        self.welcomed = False
        self.record(BuyerCreated(id))

    def welcome(self) -> None:
        self.welcomed = True
        self.record(Welcomed(self.id))


class Boom(Exception):
    pass


Body = Callable[[Any, HandlerContext, Any], None]


@dataclass(frozen=True)
class Mode:
    """Drives a sync or an async in-memory unit of work with the same test code."""

    is_async: bool

    def uow(self, store: InMemoryStore, handlers: Handlers, **kwargs: Any) -> Any:
        cls = AsyncInMemoryUnitOfWork if self.is_async else InMemoryUnitOfWork
        return cls(store, handlers=handlers, **kwargs)

    async def run(self, uow: Any, body: Callable[[Any], None], *, commit: bool = True) -> Any:
        """Open ``uow``, run ``body(uow)``, commit; return the commit's batch."""
        if self.is_async:
            async with uow:
                body(uow)
                return await uow.commit() if commit else None
        with uow:
            body(uow)
            return uow.commit() if commit else None

    async def commit(self, uow: Any) -> Any:
        result = uow.commit()
        return await result if inspect.isawaitable(result) else result

    async def get(self, uow: Any, cls: type, id: str) -> Any:
        found = uow.get(cls, id)
        return await found if inspect.isawaitable(found) else found

    def loading(self, cls: type, id_of: Callable[[Any], str], body: Body) -> Callable[..., Any]:
        """A handler that loads ``cls`` by ``id_of(event)`` through the uow, then runs ``body``."""
        if self.is_async:

            async def async_handler(event: Any, ctx: HandlerContext) -> None:
                assert ctx.uow is not None
                body(event, ctx, await ctx.uow.get(cls, id_of(event)))  # type: ignore[attr-defined]

            return async_handler

        def sync_handler(event: Any, ctx: HandlerContext) -> None:
            assert ctx.uow is not None
            body(event, ctx, ctx.uow.get(cls, id_of(event)))  # type: ignore[attr-defined]

        return sync_handler


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> Mode:
    return Mode(is_async=request.param)


@pytest.fixture
def store() -> InMemoryStore:
    return InMemoryStore()


def label(envelope: Envelope[Any]) -> str:
    """``Type:id`` of an event, as the cascade tests' handlers log it."""
    event = envelope.event
    subject = event.order_id if isinstance(event, Started) else event.buyer_id
    return f"{envelope.event_type.removeprefix('uow-test.')}:{subject}"


def types_of(envelopes: list[Envelope[Any]]) -> list[str]:
    return [e.event_type.removeprefix("uow-test.") for e in envelopes]


# -- commit ----------------------------------------------------------------------------------


async def test_commit_stores_state_and_events_in_recording_order(
    mode: Mode, store: InMemoryStore
) -> None:
    first, second = Order("o1"), Order("o2")
    buyer = Buyer("b1")  # recorded before the orders start: comes first

    def body(uow: Any) -> None:
        uow.add(first.start())
        uow.add(buyer)
        uow.add(second.start())
        buyer.welcome()

    batch = await mode.run(mode.uow(store, Handlers()), body)
    assert types_of(store.events) == ["BuyerCreated", "Started", "Started", "Welcomed"]
    assert [e.stream_id for e in store.events] == [
        "Buyer-b1",
        "Order-o1",
        "Order-o2",
        "Buyer-b1",
    ]
    assert batch.envelopes == store.events
    # Aggregates in order of their first event in the batch, whatever order they were added in.
    assert [a.id for a in batch.aggregates] == ["b1", "o1", "o2"]
    assert first.pending_events == second.pending_events == buyer.pending_events == []
    stored = store.stored(Order, "o1")
    assert stored is not None
    assert stored.status == "started"
    assert stored.pending_events == []


async def test_aggregates_changed_without_events_are_stored(
    mode: Mode, store: InMemoryStore
) -> None:
    order = Order("quiet")
    await mode.run(mode.uow(store, Handlers()), lambda uow: uow.add(order))
    assert store.stored(Order, "quiet") is not None
    assert store.events == []


async def test_leaving_the_block_without_commit_rolls_back(
    mode: Mode, store: InMemoryStore
) -> None:
    order = Order("o1").start()
    await mode.run(mode.uow(store, Handlers()), lambda uow: uow.add(order), commit=False)
    assert store.stored(Order, "o1") is None
    assert store.events == []
    assert len(order.pending_events) == 1


async def test_an_exception_in_the_block_rolls_back_and_propagates(
    mode: Mode, store: InMemoryStore
) -> None:
    order = Order("o1").start()

    def body(uow: Any) -> None:
        uow.add(order)
        raise Boom

    with pytest.raises(Boom):
        await mode.run(mode.uow(store, Handlers()), body)
    assert store.stored(Order, "o1") is None
    assert len(order.pending_events) == 1


async def test_loading_returns_a_working_copy_that_only_commit_makes_visible(
    mode: Mode, store: InMemoryStore
) -> None:
    await mode.run(mode.uow(store, Handlers()), lambda uow: uow.add(Order("o1")))
    uow = mode.uow(store, Handlers())
    if mode.is_async:
        async with uow:
            loaded = await mode.get(uow, Order, "o1")
            loaded.start()
            assert await mode.get(uow, Order, "o1") is loaded  # identity map
            assert store.stored(Order, "o1").status == "new"  # type: ignore[union-attr]
            await uow.commit()
    else:
        with uow:
            loaded = await mode.get(uow, Order, "o1")
            loaded.start()
            assert await mode.get(uow, Order, "o1") is loaded
            assert store.stored(Order, "o1").status == "new"  # type: ignore[union-attr]
            uow.commit()
    assert store.stored(Order, "o1").status == "started"  # type: ignore[union-attr]
    assert types_of(store.events) == ["Started"]


# -- in-transaction handlers and cascades ----------------------------------------------------


async def test_handlers_run_in_registration_order_with_their_context(
    mode: Mode, store: InMemoryStore
) -> None:
    calls: list[tuple[str, Any]] = []
    handlers = Handlers()

    @handlers.in_transaction(Started)
    def one_argument(event: Started) -> None:
        calls.append(("one", event))

    @handlers.in_transaction(object)
    def catch_all(event: object, ctx: HandlerContext) -> None:
        calls.append(("all", ctx))

    order = Order("o1").start()
    (envelope,) = order.pending_events
    uow = mode.uow(store, handlers)
    await mode.run(uow, lambda u: u.add(order))
    assert [name for name, _ in calls] == ["one", "all"]
    assert calls[0][1] == Started("o1")
    ctx = calls[1][1]
    assert ctx.envelope == envelope
    assert ctx.event_id == envelope.event_id
    assert ctx.uow is uow
    assert ctx.delivery_id == str(envelope.event_id)


async def test_cascades_are_breadth_first_and_commit_together(
    mode: Mode, store: InMemoryStore
) -> None:
    seen: list[str] = []
    handlers = Handlers()

    def create_buyer(event: Started, ctx: HandlerContext) -> None:
        seen.append(f"Started:{event.order_id}")
        assert ctx.uow is not None
        ctx.uow.add(Buyer(f"buyer-of-{event.order_id}"))  # type: ignore[attr-defined]

    def welcome(event: BuyerCreated, ctx: HandlerContext, buyer: Buyer) -> None:
        seen.append(f"BuyerCreated:{event.buyer_id}")
        buyer.welcome()

    def welcomed(event: Welcomed) -> None:
        seen.append(f"Welcomed:{event.buyer_id}")

    handlers.add(Started, create_buyer, when=Timing.IN_TRANSACTION)
    handlers.add(
        BuyerCreated,
        mode.loading(Buyer, lambda e: e.buyer_id, welcome),
        when=Timing.IN_TRANSACTION,
    )
    handlers.add(Welcomed, welcomed, when=Timing.IN_TRANSACTION)

    def body(uow: Any) -> None:
        uow.add(Order("o1").start())
        uow.add(Order("o2").start())

    await mode.run(mode.uow(store, handlers), body)
    # Round 1: both orders; round 2: both buyers; round 3: both welcomes. Never depth first.
    expected = [
        "Started:o1",
        "Started:o2",
        "BuyerCreated:buyer-of-o1",
        "BuyerCreated:buyer-of-o2",
        "Welcomed:buyer-of-o1",
        "Welcomed:buyer-of-o2",
    ]
    assert seen == expected
    # The committed log has the same order: dispatch order is recording order, round by round.
    assert [label(e) for e in store.events] == expected
    buyer = store.stored(Buyer, "buyer-of-o2")
    assert buyer is not None
    assert buyer.welcomed


async def test_correlation_and_causation_follow_the_cascade(
    mode: Mode, store: InMemoryStore
) -> None:
    handlers = Handlers()

    def create_buyer(event: Started, ctx: HandlerContext) -> None:
        ctx.uow.add(Buyer("b1"))  # type: ignore[union-attr]

    handlers.add(Started, create_buyer, when=Timing.IN_TRANSACTION)
    handlers.add(
        BuyerCreated,
        mode.loading(Buyer, lambda e: e.buyer_id, lambda e, ctx, buyer: buyer.welcome()),
        when=Timing.IN_TRANSACTION,
    )
    correlation = uuid7()
    uow = mode.uow(store, handlers, correlation_id=correlation, producer="uow-test")
    await mode.run(uow, lambda u: u.add(Order("o1").start()))
    started, created, welcomed = store.events
    assert types_of(store.events) == ["Started", "BuyerCreated", "Welcomed"]
    assert {e.correlation_id for e in store.events} == {correlation}
    assert started.causation_id is None
    assert created.causation_id == started.event_id
    assert welcomed.causation_id == created.event_id
    assert {e.producer for e in store.events} == {"uow-test"}


async def test_each_unit_of_work_gets_its_own_correlation_id(
    mode: Mode, store: InMemoryStore
) -> None:
    await mode.run(mode.uow(store, Handlers()), lambda u: u.add(Order("o1").start()))
    await mode.run(mode.uow(store, Handlers()), lambda u: u.add(Order("o2").start()))
    first, second = store.events
    assert isinstance(first.correlation_id, UUID)
    assert first.correlation_id != second.correlation_id


async def test_cycle_is_stopped_by_the_default_bound_and_nothing_commits(
    mode: Mode, store: InMemoryStore
) -> None:
    handlers = Handlers()
    rounds: list[int] = []

    def ping(event: Ping, ctx: HandlerContext) -> None:
        rounds.append(event.n)
        ctx.uow.add(Ball(f"pong-{event.n}", Pong(event.n + 1)))  # type: ignore[union-attr]

    def pong(event: Pong, ctx: HandlerContext) -> None:
        rounds.append(event.n)
        ctx.uow.add(Ball(f"ping-{event.n}", Ping(event.n + 1)))  # type: ignore[union-attr]

    handlers.add(Ping, ping, when=Timing.IN_TRANSACTION)
    handlers.add(Pong, pong, when=Timing.IN_TRANSACTION)
    serve = Ball("serve", Ping(1))
    with pytest.raises(CascadeLimitExceeded) as caught:
        await mode.run(mode.uow(store, handlers), lambda u: u.add(serve))
    message = str(caught.value)
    assert "after 100 rounds" in message
    assert "uow-test.Ping -> uow-test.Pong -> uow-test.Ping" in message
    assert "Nothing was committed" in message
    assert len(rounds) == 100
    assert store.events == []
    assert store.aggregates == {}
    assert len(serve.pending_events) == 1


class Ball(Aggregate):
    def __init__(self, id: str, event: object) -> None:
        self.id = id
        self.record(event)


def countdown_handlers() -> Handlers:
    handlers = Handlers()

    def next_step(event: Countdown, ctx: HandlerContext) -> None:
        if event.n > 1:
            ctx.uow.add(Ball(f"step-{event.n - 1}", Countdown(event.n - 1)))  # type: ignore[union-attr]

    handlers.add(Countdown, next_step, when=Timing.IN_TRANSACTION)
    return handlers


async def test_the_bound_is_configurable_and_counts_rounds_exactly(
    mode: Mode, store: InMemoryStore
) -> None:
    # Countdown(n) makes a chain of n events: n rounds of dispatch.
    uow = mode.uow(store, countdown_handlers(), max_rounds=3)
    await mode.run(uow, lambda u: u.add(Ball("start", Countdown(3))))
    assert [e.event.n for e in store.events] == [3, 2, 1]

    other = InMemoryStore()
    uow = mode.uow(other, countdown_handlers(), max_rounds=3)
    with pytest.raises(CascadeLimitExceeded, match="after 3 rounds"):
        await mode.run(uow, lambda u: u.add(Ball("start", Countdown(4))))
    assert other.events == []


def test_max_rounds_must_be_positive() -> None:
    with pytest.raises(UnitOfWorkError, match="max_rounds"):
        InMemoryUnitOfWork(max_rounds=0)


# -- failure and rollback --------------------------------------------------------------------


async def test_failing_handler_rolls_back_every_effect_and_keeps_the_original_error(
    mode: Mode, store: InMemoryStore
) -> None:
    await mode.run(mode.uow(store, Handlers()), lambda u: u.add(Buyer("existing")))
    committed_events = list(store.events)
    handlers = Handlers()

    def create_buyer(event: Started, ctx: HandlerContext) -> None:
        ctx.uow.add(Buyer("new-buyer"))  # type: ignore[union-attr]

    handlers.add(Started, create_buyer, when=Timing.IN_TRANSACTION)
    handlers.add(
        Started,
        mode.loading(Buyer, lambda e: "existing", lambda e, ctx, buyer: buyer.welcome()),
        when=Timing.IN_TRANSACTION,
    )

    def fraud_check(event: Started) -> None:
        raise Boom(f"order {event.order_id} rejected")

    handlers.add(Started, fraud_check, when=Timing.IN_TRANSACTION)
    order = Order("o1").start()
    with pytest.raises(Boom, match="order o1 rejected") as caught:
        await mode.run(mode.uow(store, handlers), lambda u: u.add(order))
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "fraud_check" in notes
    assert "uow-test.Started" in notes
    assert "rolled back" in notes
    # Nothing of the attempt is stored: not the order, not the new buyer, not the welcome.
    assert store.events == committed_events
    assert store.stored(Order, "o1") is None
    assert store.stored(Buyer, "new-buyer") is None
    existing = store.stored(Buyer, "existing")
    assert existing is not None
    assert not existing.welcomed
    # The order's own event stays pending, undelivered.
    assert types_of(order.pending_events) == ["Started"]


async def test_after_a_failed_commit_a_new_unit_of_work_can_commit_the_same_aggregate(
    mode: Mode, store: InMemoryStore
) -> None:
    reject = {"o1"}
    handlers = Handlers()

    def fraud_check(event: Started) -> None:
        if event.order_id in reject:
            raise Boom

    handlers.add(Started, fraud_check, when=Timing.IN_TRANSACTION)
    order = Order("o1").start()
    with pytest.raises(Boom):
        await mode.run(mode.uow(store, handlers), lambda u: u.add(order))
    reject.clear()
    await mode.run(mode.uow(store, handlers), lambda u: u.add(order))
    assert types_of(store.events) == ["Started"]
    assert order.pending_events == []


async def test_failed_commit_drops_events_handlers_recorded_on_surviving_aggregates(
    mode: Mode, store: InMemoryStore
) -> None:
    # A handler records on the very aggregate the command changed. If the attempt fails,
    # that event was an effect of the rolled-back handler: a retry must not deliver it twice.
    fail = [True]
    handlers = Handlers()

    def follow_up(event: Started, ctx: HandlerContext, order: Order) -> None:
        order.record(Welcomed(order.id))

    def maybe_fail(event: Started) -> None:
        if fail[0]:
            raise Boom

    handlers.add(
        Started, mode.loading(Order, lambda e: e.order_id, follow_up), when=Timing.IN_TRANSACTION
    )
    handlers.add(Started, maybe_fail, when=Timing.IN_TRANSACTION)
    order = Order("o1").start()
    with pytest.raises(Boom):
        await mode.run(mode.uow(store, handlers), lambda u: u.add(order))
    assert types_of(order.pending_events) == ["Started"]
    assert order.version == 1
    fail[0] = False
    await mode.run(mode.uow(store, handlers), lambda u: u.add(order))
    assert types_of(store.events) == ["Started", "Welcomed"]
    assert [e.stream_version for e in store.events] == [1, 2]


async def test_events_of_an_aggregate_added_by_a_handler_are_all_cleared(
    mode: Mode, store: InMemoryStore
) -> None:
    # An aggregate whose pending events predate the commit joins in a later round: every
    # aggregate's dispatched events must be cleared, not only those up to the last round's.
    latecomer = Buyer("late")
    handlers = Handlers()

    def bring_latecomer(event: Started, ctx: HandlerContext) -> None:
        ctx.uow.add(latecomer)  # type: ignore[union-attr]

    handlers.add(Started, bring_latecomer, when=Timing.IN_TRANSACTION)
    order = Order("o1").start()
    await mode.run(mode.uow(store, handlers), lambda u: u.add(order))
    assert types_of(store.events) == ["Started", "BuyerCreated"]
    assert order.pending_events == []
    assert latecomer.pending_events == []


async def test_commit_after_a_failed_commit_in_the_same_block_is_refused(
    mode: Mode, store: InMemoryStore
) -> None:
    await mode.run(mode.uow(store, Handlers()), lambda u: u.add(Buyer("existing")))
    handlers = Handlers()
    handlers.add(
        Started,
        mode.loading(Buyer, lambda e: "existing", lambda e, ctx, buyer: buyer.welcome()),
        when=Timing.IN_TRANSACTION,
    )

    def fraud_check(event: Started) -> None:
        raise Boom

    handlers.add(Started, fraud_check, when=Timing.IN_TRANSACTION)

    def body(uow: Any) -> None:
        uow.add(Order("o1").start())

    uow = mode.uow(store, handlers)
    if mode.is_async:
        async with uow:
            body(uow)
            with pytest.raises(Boom):
                await uow.commit()
            with pytest.raises(UnitOfWorkError, match="rolled back"):
                await uow.commit()
    else:
        with uow:
            body(uow)
            with pytest.raises(Boom):
                uow.commit()
            with pytest.raises(UnitOfWorkError, match="rolled back"):
                uow.commit()
    existing = store.stored(Buyer, "existing")
    assert existing is not None
    assert not existing.welcomed


async def test_async_handler_in_sync_unit_of_work_is_a_clear_error(store: InMemoryStore) -> None:
    handlers = Handlers()

    @handlers.in_transaction(Started)
    async def create_buyer(event: Started) -> None: ...

    uow = InMemoryUnitOfWork(store, handlers=handlers)
    with uow:
        uow.add(Order("o1").start())
        with pytest.raises(UnitOfWorkError, match="coroutine function"):
            uow.commit()
    assert store.events == []


async def test_awaitable_returned_in_sync_unit_of_work_is_a_clear_error(
    store: InMemoryStore,
) -> None:
    async def later() -> None: ...

    def sneaky(event: Started) -> Awaitable[None]:
        return later()

    handlers = Handlers()
    handlers.add(Started, sneaky, when=Timing.IN_TRANSACTION)
    uow = InMemoryUnitOfWork(store, handlers=handlers)
    with uow:
        uow.add(Order("o1").start())
        with pytest.raises(UnitOfWorkError, match="returned an awaitable"):
            uow.commit()
    assert store.events == []


async def test_async_unit_of_work_awaits_coroutine_handlers(store: InMemoryStore) -> None:
    handlers = Handlers()

    @handlers.in_transaction(Started)
    async def create_buyer(event: Started, ctx: HandlerContext) -> None:
        assert isinstance(ctx.uow, AsyncInMemoryUnitOfWork)
        if await ctx.uow.get(Buyer, "b1") is None:
            ctx.uow.add(Buyer("b1"))

    uow = AsyncInMemoryUnitOfWork(store, handlers=handlers)
    async with uow:
        uow.add(Order("o1").start())
        await uow.commit()
    assert types_of(store.events) == ["Started", "BuyerCreated"]


# -- misuse ----------------------------------------------------------------------------------


async def test_using_the_unit_of_work_outside_its_block_is_an_error(mode: Mode) -> None:
    uow = mode.uow(InMemoryStore(), Handlers())
    with pytest.raises(UnitOfWorkError, match="not open"):
        uow.add(Order("o1"))
    with pytest.raises(UnitOfWorkError, match="not open"):
        await mode.get(uow, Order, "o1")
    with pytest.raises(UnitOfWorkError, match="not open"):
        await mode.commit(uow)


async def test_commit_twice_is_an_error(mode: Mode, store: InMemoryStore) -> None:
    uow = mode.uow(store, Handlers())
    if mode.is_async:
        async with uow:
            uow.add(Order("o1").start())
            await uow.commit()
            with pytest.raises(UnitOfWorkError, match="already committed"):
                await uow.commit()
    else:
        with uow:
            uow.add(Order("o1").start())
            uow.commit()
            with pytest.raises(UnitOfWorkError, match="already committed"):
                uow.commit()
    assert len(store.events) == 1


async def test_units_of_work_do_not_nest(mode: Mode) -> None:
    uow = mode.uow(InMemoryStore(), Handlers())
    if mode.is_async:
        async with uow:
            with pytest.raises(UnitOfWorkError, match="do not nest"):
                await uow.__aenter__()
    else:
        with uow, pytest.raises(UnitOfWorkError, match="do not nest"):
            uow.__enter__()


async def test_a_unit_of_work_is_reusable_block_after_block(
    mode: Mode, store: InMemoryStore
) -> None:
    uow = mode.uow(store, Handlers())
    await mode.run(uow, lambda u: u.add(Order("o1").start()))
    await mode.run(uow, lambda u: u.add(Order("o2").start()))
    assert len(store.events) == 2


def test_only_aggregates_can_be_tracked() -> None:
    uow = InMemoryUnitOfWork()
    with uow, pytest.raises(UnitOfWorkError, match="not an Aggregate"):
        uow.add(object())  # type: ignore[type-var]


def test_tracking_is_by_identity_and_keeps_the_order_of_first_tracking() -> None:
    store = InMemoryStore()
    uow = InMemoryUnitOfWork(store)
    orders = [Order(f"o{i}") for i in range(500)]
    twin = Order("o7")  # equal id, another object: a second aggregate, not the same one
    with uow:
        for order in reversed(orders):
            uow.track(order)
        for order in orders:
            assert uow.track(order) is order  # again: a no-op that returns the aggregate
            order.start()
        uow.track(twin)
        assert list(uow.aggregates()) == [*reversed(orders), twin]
        uow.commit()
    # Each aggregate's event committed once, in the order the events were recorded.
    assert [e.stream_id for e in store.events] == [o.stream_id for o in orders]


# -- the recording context around and inside a unit of work ----------------------------------


async def test_commit_inside_a_recording_context_block_keeps_causation(
    mode: Mode, store: InMemoryStore
) -> None:
    handlers = Handlers()

    def create_buyer(event: Started, ctx: HandlerContext) -> None:
        ctx.uow.add(Buyer("b1"))  # type: ignore[union-attr]

    handlers.add(Started, create_buyer, when=Timing.IN_TRANSACTION)
    uow = mode.uow(store, handlers)
    if mode.is_async:
        async with uow:
            uow.add(Order("o1").start())
            with recording_context(producer="api"):
                await uow.commit()
    else:
        with uow:
            uow.add(Order("o1").start())
            with recording_context(producer="api"):
                uow.commit()
    started, created = store.events
    assert created.causation_id == started.event_id
    assert created.correlation_id == started.correlation_id
    assert created.producer == "api"


def test_recording_context_inside_a_handler_overrides_the_cause(store: InMemoryStore) -> None:
    chosen = uuid7()
    handlers = Handlers()

    def create_buyer(event: Started, ctx: HandlerContext) -> None:
        with recording_context(correlation_id=chosen):
            ctx.uow.add(Buyer("b1"))  # type: ignore[union-attr]
        ctx.uow.add(Buyer("b2"))  # type: ignore[union-attr]

    handlers.add(Started, create_buyer, when=Timing.IN_TRANSACTION)
    with InMemoryUnitOfWork(store, handlers=handlers) as uow:
        uow.add(Order("o1").start())
        uow.commit()
    started, b1, b2 = store.events
    # Inside the block the explicit correlation wins; the cause is still the event handled.
    assert (b1.correlation_id, b1.causation_id) == (chosen, started.event_id)
    assert (b2.correlation_id, b2.causation_id) == (started.correlation_id, started.event_id)


def test_a_unit_of_work_opened_while_handling_an_event_inherits_its_ids(
    store: InMemoryStore,
) -> None:
    # What an after-commit subscriber does: handle a delivered event in a fresh unit of work.
    delivered = Order("o1").start().pending_events[0]
    token = caused_by(delivered)
    try:
        with InMemoryUnitOfWork(store) as uow:
            uow.add(Buyer("b1"))
            uow.commit()
    finally:
        restore(token)
    (created,) = store.events
    assert created.causation_id == delivered.event_id
    assert created.correlation_id == delivered.correlation_id
    # Outside, the ambient context is back to nothing.
    assert current_recording_context().causation_id is None


def test_commit_from_inside_a_handler_is_refused(store: InMemoryStore) -> None:
    handlers = Handlers()

    def eager(event: Started, ctx: HandlerContext) -> None:
        ctx.uow.commit()  # type: ignore[union-attr]

    handlers.add(Started, eager, when=Timing.IN_TRANSACTION)
    with InMemoryUnitOfWork(store, handlers=handlers) as uow:
        uow.add(Order("o1").start())
        with pytest.raises(UnitOfWorkError, match="called from an in-transaction handler"):
            uow.commit()
    assert store.events == []


async def test_each_event_gets_its_own_handler_context(mode: Mode, store: InMemoryStore) -> None:
    contexts: list[HandlerContext] = []
    handlers = Handlers()

    def first(event: Started, ctx: HandlerContext) -> None:
        contexts.append(ctx)

    def second(event: Started, ctx: HandlerContext) -> None:
        contexts.append(ctx)

    handlers.add(Started, first, when=Timing.IN_TRANSACTION)
    handlers.add(Started, second, when=Timing.IN_TRANSACTION)
    one, two = Order("o1").start(), Order("o2").start()

    def body(uow: Any) -> None:
        uow.add(one)
        uow.add(two)

    await mode.run(mode.uow(store, handlers), body)
    expected = store.events
    assert [ctx.envelope for ctx in contexts] == [
        expected[0],
        expected[0],
        expected[1],
        expected[1],
    ]
    assert [ctx.delivery_id for ctx in contexts[::2]] == [str(e.event_id) for e in expected]
