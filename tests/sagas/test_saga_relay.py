"""Sagas under the relay: the saga's state, dedup record and commands commit with the
subscriber checkpoint; commands reach their handlers through the outbox, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, Table
from sqlalchemy import event as sql_event
from sqlalchemy.orm import sessionmaker

from tidings import Aggregate, HandlerContext, Handlers, Timing
from tidings.outbox import tables as outbox_tables
from tidings.outbox.config import RelayConfig
from tidings.outbox.relay import Relay
from tidings.sagas.sql import SagaRunner
from tidings.sagas.subscriber import OutboxCommands, register_saga
from tidings.sagas.tables import saga_metadata

from .model import (
    AuthorizePayment,
    CancelOrder,
    OrderConfirmed,
    OrderFulfilment,
    PaymentFailed,
    ReleaseStock,
    StockReserved,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Shop(Aggregate):
    """Records whatever the test tells it to (a stand-in for the real aggregates)."""

    def __init__(self, order_id: str) -> None:
        self.id = order_id

    def happened(self, *events: object) -> None:
        for event in events:
            self.record(event)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> Engine:
    engine: Engine = request.getfixturevalue(
        "sqlite_sync_engine" if request.param == "sqlite" else "pg_engine"
    )
    outbox_tables.create_tables(engine)
    saga_metadata.create_all(engine)
    return engine


def build(engine: Engine, clock: FakeClock) -> tuple[RelayConfig, list[object]]:
    handlers = Handlers()
    received: list[object] = []

    register_saga(handlers, OrderFulfilment, sink=OutboxCommands(clock=clock), clock=clock)

    def command_handler(command: object, ctx: HandlerContext) -> None:
        received.append(command)

    for command_type in (AuthorizePayment, CancelOrder, ReleaseStock):
        handlers.add(command_type, command_handler, when=Timing.AFTER_COMMIT, name="commands")
    return RelayConfig(engine, handlers, listen=False), received


def commit(config: RelayConfig, *events: object) -> None:
    with config.unit_of_work() as uow:
        shop = uow.track(Shop("o-1"))
        shop.happened(*events)
        uow.commit()


def test_saga_commands_travel_through_the_outbox_once(engine: Engine) -> None:
    clock = FakeClock()
    config, received = build(engine, clock)
    relay = Relay(config)
    commit(config, OrderConfirmed("o-1", ("a",)), StockReserved("o-1", "a"))
    relay.run_until_idle()
    assert received == [AuthorizePayment("o-1")]

    commit(config, PaymentFailed("o-1", "declined"))
    relay.run_until_idle()
    assert received == [
        AuthorizePayment("o-1"),
        ReleaseStock("o-1", "a"),
        CancelOrder("o-1", "declined"),
    ]
    # A second relay (a restart) finds nothing left to do.
    Relay(config).run_until_idle()
    assert len(received) == 3


def test_timeouts_send_their_commands_through_the_outbox(engine: Engine) -> None:
    clock = FakeClock()
    config, received = build(engine, clock)
    relay = Relay(config)
    commit(config, OrderConfirmed("o-1", ("a",)))
    relay.run_until_idle()
    runner = SagaRunner(
        sessionmaker(engine), [OrderFulfilment], OutboxCommands(clock=clock), clock=clock
    )
    clock.now += timedelta(minutes=16)
    [fired] = runner.fire_due_timeouts()
    assert fired.completed
    relay.run_until_idle()
    assert received == [AuthorizePayment("o-1"), CancelOrder("o-1", "payment overdue")]


def test_saga_commands_wake_listening_relays_after_the_commit(
    pg_engine: Engine, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg
    from sqlalchemy import func, select

    from tidings.outbox.participant import PostCommitNotifier, notify_channel
    from tidings.testing.services import POSTGRES_URL

    outbox_tables.create_tables(pg_engine)
    saga_metadata.create_all(pg_engine)
    clock = FakeClock()
    config, received = build(pg_engine, clock)
    commit(config, OrderConfirmed("o-1", ("a",)), StockReserved("o-1", "a"))
    channel = notify_channel(outbox_tables.outbox, pg_schema)
    outbox = outbox_tables.outbox
    saga_rows = select(func.count()).where(outbox.c.stream_id.startswith("saga:"))
    committed_when_notified: list[int] = []
    send = PostCommitNotifier.notify_log

    def notify_log(self: PostCommitNotifier, requested: Table) -> None:
        with pg_engine.connect() as other:  # what another connection sees: only committed rows
            committed_when_notified.append(int(other.execute(saga_rows).scalar_one()))
        send(self, requested)

    monkeypatch.setattr(PostCommitNotifier, "notify_log", notify_log)
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    dsn = POSTGRES_URL.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel}"')
        sql_event.listen(pg_engine, "before_cursor_execute", seen)
        try:
            Relay(config).run_until_idle()
        finally:
            sql_event.remove(pg_engine, "before_cursor_execute", seen)
        # The channel is the database's, shared with whatever else runs there: any number.
        notified = {n.channel for n in listener.notifies(timeout=10, stop_after=1)}
    assert notified == {channel}
    assert received == [AuthorizePayment("o-1")]
    assert committed_when_notified == [1], "asked for once, after the command row committed"
    assert not [s for s in statements if "pg_notify" in s], "not inside the writing transaction"
