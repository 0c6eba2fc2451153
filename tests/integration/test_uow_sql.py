"""The SQLAlchemy unit of work on real databases: SQLite (a file) and PostgreSQL, sync and asyncio.

Every test runs on the four combinations through :class:`Db`, which hides only how a unit of
work is driven and how rows are counted; the rules checked are the same.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, String, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tidings import Aggregate, HandlerContext, Handlers, StoreError, Timing, event
from tidings.persistence.sql import AsyncSqlUnitOfWork, SqlUnitOfWork


class Base(DeclarativeBase):
    pass


@event(name="uow-sql.OrderPlaced")
class OrderPlaced:
    order_id: str
    buyer_id: str


@event(name="uow-sql.OrderShipped")
class OrderShipped:
    order_id: str


@event(name="uow-sql.BuyerCreated")
class BuyerCreated:
    buyer_id: str


@event(name="uow-sql.Counted")
class Counted:
    value: int


class Order(Base, Aggregate):
    __tablename__ = "uow_sql_orders"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    buyer_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(default=0)

    @classmethod
    def place(cls, order_id: str, buyer_id: str) -> Order:
        order = cls(id=order_id, buyer_id=buyer_id, status="placed", version=0)
        order.record(OrderPlaced(order_id, buyer_id))
        return order

    def ship(self) -> None:
        self.status = "shipped"
        self.record(OrderShipped(self.id))


class Buyer(Base, Aggregate):
    __tablename__ = "uow_sql_buyers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    orders: Mapped[int] = mapped_column(default=0)
    version: Mapped[int] = mapped_column(default=0)

    @classmethod
    def create(cls, buyer_id: str) -> Buyer:
        buyer = cls(id=buyer_id, orders=0, version=0)
        buyer.record(BuyerCreated(buyer_id))
        return buyer


class Counter(Base, Aggregate):
    __tablename__ = "uow_sql_counters"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(default=0)
    version: Mapped[int] = mapped_column(default=0)

    def increment(self) -> None:
        self.value += 1
        self.record(Counted(self.value))


class Boom(Exception):
    pass


@dataclass
class Db:
    """One database and one driving style (sync or asyncio)."""

    name: str
    engine: Engine | AsyncEngine

    @property
    def is_async(self) -> bool:
        return isinstance(self.engine, AsyncEngine)

    async def create_tables(self) -> None:
        if isinstance(self.engine, AsyncEngine):
            async with self.engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
        else:
            Base.metadata.create_all(self.engine)

    def uow(self, handlers: Handlers) -> Any:
        if isinstance(self.engine, AsyncEngine):
            return AsyncSqlUnitOfWork(self.engine, handlers)
        return SqlUnitOfWork(self.engine, handlers)

    async def run(self, uow: Any, body: Callable[[Any], Any], *, commit: bool = True) -> None:
        """Open ``uow``, run ``body(uow)`` (sync, or a coroutine for async), then commit."""
        if self.is_async:
            async with uow:
                result = body(uow)
                if inspect.isawaitable(result):
                    await result
                if commit:
                    await uow.commit()
        else:
            with uow:
                body(uow)
                if commit:
                    uow.commit()

    async def scalar(self, statement: Any) -> Any:
        if isinstance(self.engine, AsyncEngine):
            async with self.engine.connect() as conn:
                return (await conn.execute(statement)).scalar_one_or_none()
        with self.engine.connect() as conn:
            return conn.execute(statement).scalar_one_or_none()

    async def count(self, model: type[Base]) -> int:
        return int(await self.scalar(select(func.count()).select_from(model)))

    def loading_handler(
        self, cls: type, id_of: Callable[[Any], str], body: Callable[[Any, Any, Any], None]
    ) -> Callable[..., Any]:
        """A handler that loads ``cls`` through the uow, runs ``body``, and flushes its rows."""
        if self.is_async:

            async def async_handler(event: Any, ctx: HandlerContext) -> None:
                uow = ctx.uow
                assert isinstance(uow, AsyncSqlUnitOfWork)
                body(event, uow, await uow.get(cls, id_of(event)))
                await uow.session.flush()

            return async_handler

        def sync_handler(event: Any, ctx: HandlerContext) -> None:
            uow = ctx.uow
            assert isinstance(uow, SqlUnitOfWork)
            body(event, uow, uow.get(cls, id_of(event)))
            uow.session.flush()

        return sync_handler


@pytest.fixture(params=["sqlite-sync", "sqlite-async", "postgres-sync", "postgres-async"])
def db(request: pytest.FixtureRequest) -> Db:
    fixture = {
        "sqlite-sync": "sqlite_sync_engine",
        "sqlite-async": "sqlite_async_engine",
        "postgres-sync": "pg_engine",
        "postgres-async": "pg_async_engine",
    }[request.param]
    return Db(request.param, request.getfixturevalue(fixture))


def create_buyer_handlers(db: Db, *, reject: set[str] | None = None) -> Handlers:
    """OrderPlaced creates (or loads and updates) the buyer in the same transaction."""
    handlers = Handlers()

    def create_or_update(event: OrderPlaced, uow: Any, buyer: Buyer | None) -> None:
        if buyer is None:
            buyer = uow.add(Buyer.create(event.buyer_id))
        buyer.orders += 1

    handlers.add(
        OrderPlaced,
        db.loading_handler(Buyer, lambda e: e.buyer_id, create_or_update),
        when=Timing.IN_TRANSACTION,
    )

    def fraud_check(event: OrderPlaced) -> None:
        if reject is not None and event.order_id in reject:
            raise Boom(f"order {event.order_id} rejected")

    handlers.add(OrderPlaced, fraud_check, when=Timing.IN_TRANSACTION)
    return handlers


async def test_commit_writes_state_and_handler_effects_together(db: Db) -> None:
    await db.create_tables()
    seen: list[str] = []
    handlers = create_buyer_handlers(db)
    handlers.add(BuyerCreated, lambda e: seen.append(e.buyer_id), when=Timing.IN_TRANSACTION)
    order = Order.place("o1", "alice")
    await db.run(db.uow(handlers), lambda uow: uow.add(order))
    assert order.pending_events == []
    assert seen == ["alice"]  # the cascade reached the buyer's own event
    assert await db.scalar(select(Order.status).where(Order.id == "o1")) == "placed"
    assert await db.scalar(select(Buyer.orders).where(Buyer.id == "alice")) == 1

    second = Order.place("o2", "alice")
    await db.run(db.uow(handlers), lambda uow: uow.add(second))
    assert await db.scalar(select(Buyer.orders).where(Buyer.id == "alice")) == 2
    assert seen == ["alice"]


async def test_failing_handler_rolls_back_rows_earlier_handlers_wrote(db: Db) -> None:
    await db.create_tables()
    handlers = create_buyer_handlers(db, reject={"bad-1", "bad-2"})
    await db.run(db.uow(handlers), lambda uow: uow.add(Order.place("good", "alice")))

    # bad-1: the first handler *inserts* a new buyer (flushed: the row is in the database
    # inside the transaction) before fraud_check raises. bad-2: it *updates* an existing row.
    for order_id, buyer_id in (("bad-1", "mallory"), ("bad-2", "alice")):
        order = Order.place(order_id, buyer_id)
        with pytest.raises(Boom, match=f"order {order_id} rejected") as caught:
            await db.run(db.uow(handlers), lambda uow, order=order: uow.add(order))
        assert "fraud_check" in "\n".join(caught.value.__notes__)
        assert [e.event_type for e in order.pending_events] == ["uow-sql.OrderPlaced"]

    assert await db.count(Order) == 1
    assert await db.scalar(select(Buyer.id).where(Buyer.id == "mallory")) is None
    assert await db.scalar(select(Buyer.orders).where(Buyer.id == "alice")) == 1


async def test_aggregates_loaded_by_a_plain_select_have_their_events_dispatched(db: Db) -> None:
    await db.create_tables()
    await db.run(db.uow(Handlers()), lambda uow: uow.add(Order.place("o1", "alice")))
    shipped: list[str] = []
    handlers = Handlers()
    handlers.add(OrderShipped, lambda e: shipped.append(e.order_id), when=Timing.IN_TRANSACTION)
    loaded: list[Order] = []

    if db.is_async:

        async def ship(uow: Any) -> None:
            order = (await uow.session.execute(select(Order))).scalar_one()
            order.ship()
            loaded.append(order)

    else:

        def ship(uow: Any) -> None:
            order = uow.session.execute(select(Order)).scalar_one()
            order.ship()
            loaded.append(order)

    await db.run(db.uow(handlers), ship)  # never passed to uow.add or uow.get
    assert shipped == ["o1"]
    assert loaded[0].pending_events == []
    assert await db.scalar(select(Order.status).where(Order.id == "o1")) == "shipped"


async def test_leaving_without_commit_writes_nothing(db: Db) -> None:
    await db.create_tables()
    order = Order.place("o1", "alice")
    await db.run(db.uow(Handlers()), lambda uow: uow.add(order), commit=False)
    assert await db.count(Order) == 0
    assert len(order.pending_events) == 1


async def test_database_error_at_commit_is_a_store_error_and_rolls_back(db: Db) -> None:
    await db.create_tables()
    await db.run(db.uow(Handlers()), lambda uow: uow.add(Order.place("o1", "alice")))
    seen: list[str] = []
    handlers = Handlers()
    handlers.add(OrderPlaced, lambda e: seen.append(e.buyer_id), when=Timing.IN_TRANSACTION)
    duplicate = Order.place("o1", "bob")  # same primary key: fails when the batch is flushed
    with pytest.raises(StoreError, match="database error during commit") as caught:
        await db.run(db.uow(handlers), lambda uow: uow.add(duplicate))
    assert seen == ["bob"]  # handlers ran first; the failure came from the database after them
    assert caught.value.__cause__ is not None
    assert len(duplicate.pending_events) == 1
    assert await db.scalar(select(Order.buyer_id).where(Order.id == "o1")) == "alice"


# -- SQLite: concurrent writers queue instead of failing --------------------------------------

WRITERS = 6
INCREMENTS = 8


def test_sqlite_concurrent_writers_neither_fail_nor_lose_updates(
    sqlite_sync_engine: Engine,
) -> None:
    # Each unit of work *reads* the counter then writes it. With deferred transactions two
    # writers would both read, then one would fail to upgrade its lock ("database is locked")
    # or lose an update; BEGIN IMMEDIATE + the busy timeout makes them queue instead.
    Base.metadata.create_all(sqlite_sync_engine)
    with SqlUnitOfWork(sqlite_sync_engine) as uow:
        uow.add(Counter(id="c", value=0, version=0))
        uow.commit()
    errors: list[BaseException] = []
    start = threading.Barrier(WRITERS)

    def writer() -> None:
        start.wait()
        try:
            for _ in range(INCREMENTS):
                with SqlUnitOfWork(sqlite_sync_engine) as uow:
                    counter = uow.get(Counter, "c")
                    assert counter is not None
                    counter.increment()
                    uow.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with SqlUnitOfWork(sqlite_sync_engine) as uow:
        counter = uow.get(Counter, "c")
        assert counter is not None
        assert (counter.value, counter.version) == (WRITERS * INCREMENTS,) * 2


async def test_sqlite_concurrent_async_writers_neither_fail_nor_lose_updates(
    sqlite_async_engine: AsyncEngine,
) -> None:
    async with sqlite_async_engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with AsyncSqlUnitOfWork(sqlite_async_engine) as uow:
        uow.add(Counter(id="c", value=0, version=0))
        await uow.commit()

    async def writer() -> None:
        for _ in range(INCREMENTS):
            async with AsyncSqlUnitOfWork(sqlite_async_engine) as uow:
                counter = await uow.get(Counter, "c")
                assert counter is not None
                await asyncio.sleep(0)  # let the other writers interleave between read and write
                counter.increment()
                await uow.commit()

    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    async with AsyncSqlUnitOfWork(sqlite_async_engine) as uow:
        counter = await uow.get(Counter, "c")
        assert counter is not None
        assert (counter.value, counter.version) == (WRITERS * INCREMENTS,) * 2
