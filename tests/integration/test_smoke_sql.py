"""Smoke: the demo's unit of work on PostgreSQL, sync and async (full suites live beside this)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import HandlerContext, Handlers
from tidings._demo import Base, Buyer, FraudSuspected, Order, OrderStarted, build_handlers
from tidings.persistence.sql import AsyncSqlUnitOfWork, SqlUnitOfWork


def test_postgres_commit_and_rollback(pg_engine: Engine) -> None:
    Base.metadata.create_all(pg_engine)
    uow = SqlUnitOfWork(pg_engine, build_handlers([], reject={"bad"}))
    with uow:
        uow.add(Order.start("good", "alice", Decimal(1)))
        uow.commit()
    with uow:
        uow.add(Order.start("bad", "mallory", Decimal(1)))
        with pytest.raises(FraudSuspected):
            uow.commit()
    with uow:
        assert uow.get(Buyer, "alice") is not None
        assert uow.get(Buyer, "mallory") is None
        assert uow.get(Order, "bad") is None


async def test_postgres_async_uow_awaits_coroutine_handlers(pg_async_engine: AsyncEngine) -> None:
    async with pg_async_engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    handlers = Handlers()

    @handlers.in_transaction(OrderStarted)
    async def create_buyer(started: OrderStarted, ctx: HandlerContext) -> None:
        assert isinstance(ctx.uow, AsyncSqlUnitOfWork)
        if await ctx.uow.get(Buyer, started.buyer_id) is None:
            ctx.uow.add(Buyer.create(started.buyer_id))

    uow = AsyncSqlUnitOfWork(pg_async_engine, handlers)
    async with uow:
        order = uow.add(Order.start("a1", "bob", Decimal(2)))
        await uow.commit()
    assert not order.pending_events
    async with uow:
        assert await uow.get(Buyer, "bob") is not None
