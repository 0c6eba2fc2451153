"""The shipping context's consumer: shipment requests in, a pick list out, once each."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from tidings import Codec, Envelope, EventRegistry, event
from tidings.brokers.inbox import InboxConsumer, inbox_metadata
from tidings.brokers.port import Broker, Topology
from tidings.brokers.urls import broker_for
from tidings.brokers.worker import BrokerSubscription, Worker
from tidings.integration.signing import Keyring, Verifier

# -- the published language, as this team declares it (from the exported JSON Schema) -------
# To this service they are incoming events like any other: declared with @event, decoded
# through its own registry.


@event(name="ordering.public.ShipmentRequested", version=1)
class ShipmentRequested:
    order_id: str
    items: tuple[tuple[str, int], ...]


@event(name="ordering.public.ShipmentWithdrawn", version=1)
class ShipmentWithdrawn:
    order_id: str
    reason: str


registry = EventRegistry()
registry.register(ShipmentRequested)
registry.register(ShipmentWithdrawn)
codec = Codec(registry)

# The same bus and consumer group the ordering service declares.
TOPOLOGY = Topology(
    name=os.environ.get("SHIPPING_BUS", "shipping"), groups=("shipping-context",), partitions=4
)

# -- this context's own database ---------------------------------------------------------------

metadata = MetaData()
pick_lists = Table(
    "shipping_pick_lists",
    metadata,
    Column("order_id", String(100), primary_key=True),
    Column("items", Text, nullable=False),
    Column("status", String(20), nullable=False),
    Column("note", Text, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


async def handle(envelope: Envelope[Any], session: AsyncSession) -> None:
    """Runs in the inbox's transaction: these writes commit with the dedup record."""
    event = envelope.event
    now = datetime.now(UTC)
    if isinstance(event, ShipmentRequested):
        items = ", ".join(f"{quantity} x {sku}" for sku, quantity in event.items)
        exists = await session.scalar(
            select(pick_lists.c.order_id).where(pick_lists.c.order_id == event.order_id)
        )
        if exists is None:
            await session.execute(
                pick_lists.insert().values(
                    order_id=event.order_id, items=items, status="to-pick", updated_at=now
                )
            )
    elif isinstance(event, ShipmentWithdrawn):
        # Withdrawals may overtake nothing (same stream, same partition), but a withdrawal for
        # an order never requested is simply recorded as such.
        result = await session.execute(
            update(pick_lists)
            .where(pick_lists.c.order_id == event.order_id)
            .values(status="withdrawn", note=event.reason, updated_at=now)
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            await session.execute(
                pick_lists.insert().values(
                    order_id=event.order_id,
                    items="",
                    status="withdrawn",
                    note=event.reason,
                    updated_at=now,
                )
            )


async def create_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.run_sync(inbox_metadata.create_all)


def build_worker(
    db_url: str | AsyncEngine, bus: str | Callable[[], Broker], signing_keys: Keyring | None
) -> Worker:
    """The worker: ``bus`` is the broker's URL (``amqp://``, ``nats://``, ``redis://``) or a
    client factory; with ``signing_keys``, unsigned or forged messages are dead-lettered."""
    engine = create_async_engine(db_url) if isinstance(db_url, str) else db_url
    verifier = Verifier(signing_keys) if signing_keys is not None else None
    consumer = InboxConsumer("shipping-context", engine, handle, codec=codec, verifier=verifier)
    broker = functools.partial(broker_for, bus, TOPOLOGY) if isinstance(bus, str) else bus
    return Worker([BrokerSubscription(broker=broker, group="shipping-context", handler=consumer)])


async def serve(
    db_url: str,
    bus: str | Callable[[], Broker],
    signing_keys: Keyring | None,
    stop: asyncio.Event,
) -> None:
    """Run the shipping context in this event loop until ``stop`` is set: its tables first,
    then the worker (what ``tidings worker`` runs, for a process of one's own)."""
    engine = create_async_engine(db_url)
    try:
        await create_tables(engine)
        await build_worker(engine, bus, signing_keys).run(stop)
    finally:
        await engine.dispose()


async def pick_list_statuses(db_url: str) -> dict[str, str]:
    """Each order's pick list status, as this context's database has it."""
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(pick_lists.c.order_id, pick_lists.c.status))
            return {str(row.order_id): str(row.status) for row in rows}
    finally:
        await engine.dispose()


def _from_environment() -> Worker | None:
    db_url = os.environ.get("SHIPPING_DB_URL")
    # SHIPPING_AMQP_URL is the older name, from when this context listened on RabbitMQ only.
    bus_url = os.environ.get("SHIPPING_BUS_URL") or os.environ.get("SHIPPING_AMQP_URL")
    if not db_url or not bus_url:
        return None
    key = os.environ.get("SHIPPING_SIGNING_KEY")
    keys = Keyring({"ordering-1": bytes.fromhex(key)}) if key else None
    return build_worker(db_url, bus_url, keys)


#: For ``tidings worker --app shipping_context.service:worker``.
worker = _from_environment()
