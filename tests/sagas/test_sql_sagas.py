"""Sagas on SQLite and PostgreSQL: one transaction for state, commands and the dedup record;
no lost update under concurrency; durable timeouts delivered once in effect."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from tidings import Envelope, uuid7
from tidings.sagas.sql import SagaRunner
from tidings.sagas.tables import saga_instances, saga_metadata, saga_processed, saga_timeouts

from .model import (
    CancelOrder,
    OrderConfirmed,
    OrderFulfilment,
    PaymentFailed,
    PaymentSucceeded,
    StockReserved,
)

commands_metadata = MetaData()
sent_commands = Table(
    "saga_test_commands",
    commands_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("saga_key", String(100)),
    Column("command", String(400)),
)


class TableSink:
    """Writes commands through the saga's own session, so they commit or roll back with it."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on

    def send(
        self,
        session: Session,
        commands: Sequence[object],
        *,
        saga: str,
        key: str,
        cause: Envelope[Any] | None,
    ) -> None:
        for command in commands:
            session.execute(insert(sent_commands).values(saga_key=key, command=repr(command)))
            if self.fail_on and self.fail_on in repr(command):
                raise RuntimeError("command transport exploded")


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> Engine:
    engine: Engine = request.getfixturevalue(
        "sqlite_sync_engine" if request.param == "sqlite" else "pg_engine"
    )
    saga_metadata.create_all(engine)
    commands_metadata.create_all(engine)
    return engine


def envelope_of(event: object, stream: str = "Order-o-1") -> Envelope[Any]:
    event_id = uuid7()
    return Envelope(
        event=event,
        event_id=event_id,
        event_type=type(event).__name__,
        event_version=1,
        occurred_at=datetime.now(UTC),
        stream_id=stream,
        stream_version=1,
        correlation_id=event_id,
        causation_id=None,
        producer="test",
    )


def runner_for(engine: Engine, clock: FakeClock, sink: TableSink | None = None) -> SagaRunner:
    return SagaRunner(sessionmaker(engine), [OrderFulfilment], sink or TableSink(), clock=clock)


def commands(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(select(sent_commands.c.command).order_by(sent_commands.c.id)))


def count(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)


def test_state_commands_and_dedup_commit_together(engine: Engine) -> None:
    runner = runner_for(engine, FakeClock())
    confirmed = envelope_of(OrderConfirmed("o-1", ("a",)))
    [outcome] = runner.deliver(confirmed)
    assert outcome.handled
    assert commands(engine) == ["AuthorizePayment(order_id='o-1')"]
    assert count(engine, saga_timeouts) == 1
    # The same message again (a redelivery) changes nothing.
    [again] = runner.deliver(confirmed)
    assert not again.handled and again.reason == "duplicate message"
    assert len(commands(engine)) == 1 and count(engine, saga_timeouts) == 1


def test_a_failure_rolls_back_state_commands_and_dedup_record(engine: Engine) -> None:
    clock = FakeClock()
    runner_for(engine, clock).deliver(envelope_of(StockReserved("o-1", "sku-1")))
    failing = runner_for(engine, clock, TableSink(fail_on="CancelOrder"))
    failed = envelope_of(PaymentFailed("o-1", "declined"))
    with pytest.raises(RuntimeError, match="exploded"):
        failing.deliver(failed)
    assert commands(engine) == []  # ReleaseStock was written, then rolled back
    with engine.connect() as conn:
        row = conn.execute(select(saga_instances)).one()
        assert (row.version, row.completed) == (1, False)
        assert conn.scalar(select(func.count()).select_from(saga_processed)) == 1
    # After the fix, the same message is handled (it was never recorded as processed).
    [outcome] = runner_for(engine, clock).deliver(failed)
    assert outcome.completed
    assert commands(engine) == [
        "ReleaseStock(order_id='o-1', sku='sku-1')",
        "CancelOrder(order_id='o-1', reason='declined')",
    ]


def test_concurrent_events_for_one_instance_lose_no_update(engine: Engine) -> None:
    runner = runner_for(engine, FakeClock())
    runner.deliver(envelope_of(StockReserved("o-1", "first")))
    skus = [f"sku-{n}" for n in range(16)]
    errors: list[BaseException] = []

    def deliver(sku: str) -> None:
        try:
            runner.deliver(envelope_of(StockReserved("o-1", sku)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(sku,)) for sku in skus]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with engine.connect() as conn:
        row = conn.execute(select(saga_instances)).one()
    from tidings.sagas.runtime import StoredSaga, decode_state

    state = decode_state(OrderFulfilment, StoredSaga("o-1", row.state, row.version, False))
    assert sorted(state.reserved) == sorted(["first", *skus])
    assert row.version == 1 + len(skus)


def test_timeouts_survive_restarts_and_fire_once(engine: Engine) -> None:
    clock = FakeClock()
    runner_for(engine, clock).deliver(envelope_of(OrderConfirmed("o-1", ("a",))))
    runner_for(engine, clock).deliver(envelope_of(StockReserved("o-1", "a")))

    restarted = runner_for(engine, clock)  # a new process would see the same rows
    assert restarted.fire_due_timeouts() == []  # not due yet
    clock.now += timedelta(minutes=15)
    assert restarted.due_timeouts() == 1
    [fired] = restarted.fire_due_timeouts()
    assert fired.completed
    assert restarted.fire_due_timeouts() == []  # delivered once
    assert commands(engine)[-2:] == [
        "ReleaseStock(order_id='o-1', sku='a')",
        "CancelOrder(order_id='o-1', reason='payment overdue')",
    ]


def test_a_reply_cancels_the_timeout(engine: Engine) -> None:
    clock = FakeClock()
    runner = runner_for(engine, clock)
    runner.deliver(envelope_of(OrderConfirmed("o-1", ("a",))))
    runner.deliver(envelope_of(PaymentSucceeded("o-1")))
    assert count(engine, saga_timeouts) == 0
    clock.now += timedelta(hours=1)
    assert runner.fire_due_timeouts() == []
    assert not any("CancelOrder" in c for c in commands(engine))


def test_a_failing_timeout_is_retried_then_given_up(engine: Engine) -> None:
    clock = FakeClock()
    runner_for(engine, clock).deliver(envelope_of(OrderConfirmed("o-1", ("a",))))
    clock.now += timedelta(minutes=20)
    failing = SagaRunner(
        sessionmaker(engine),
        [OrderFulfilment],
        TableSink(fail_on="CancelOrder"),
        clock=clock,
        max_timeout_attempts=2,
    )
    assert failing.fire_due_timeouts() == []
    assert failing.fire_due_timeouts() == []
    assert failing.due_timeouts() == 0  # given up after 2 attempts, kept for inspection
    with engine.connect() as conn:
        row = conn.execute(select(saga_timeouts)).one()
    assert row.attempts == 2 and "command transport exploded" in row.last_error
    assert CancelOrder.__name__ not in "".join(commands(engine))
