"""Projections: checkpoint with the read model, catch up, follow live, rebuild and switch over."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
)
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import Envelope
from tidings.errors import ConfigurationError
from tidings.eventsourcing import (
    AsyncProjectionRunner,
    EventStore,
    Progress,
    Projection,
    ProjectionRunner,
    Projections,
    default_schema,
)
from tidings.testing.store_contract import (
    ContractAccount,
    Deposited,
    Opened,
    fresh_id,
    wait_for_log,
)


class Balances(Projection):
    name = "balances"
    types = (Opened, Deposited)
    stream_prefix = "ContractAccount-"

    def __init__(self) -> None:
        self.fail_on_amount: int | None = None

    def define_tables(self, metadata: MetaData, suffix: str) -> dict[str, Table]:
        return {
            "balances": Table(
                f"balances{suffix}",
                metadata,
                Column("account", String(64), primary_key=True),
                Column("balance", Integer, nullable=False),
            )
        }

    def handle(self, envelope: Envelope[Any], conn: Connection, tables: dict[str, Table]) -> None:
        balances = tables["balances"]
        account = envelope.stream_id
        if isinstance(envelope.event, Opened):
            conn.execute(insert(balances).values(account=account, balance=0))
        elif isinstance(envelope.event, Deposited):
            if envelope.event.amount == self.fail_on_amount:
                raise RuntimeError("read model cannot take this event")
            conn.execute(
                sql_update(balances)
                .where(balances.c.account == account)
                .values(balance=balances.c.balance + envelope.event.amount)
            )


def balances_now(runner: ProjectionRunner) -> dict[str, int]:
    with runner.engine.begin() as conn:
        table = runner.read_model(conn)["balances"]
        return {row.account: row.balance for row in conn.execute(select(table))}


def settle(store: EventStore) -> None:
    """Wait until every committed event is visible to log readers (PostgreSQL's gap-safe fence
    lags while older transactions elsewhere in the cluster are still open)."""
    with store.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(default_schema.events)).scalar_one()
    wait_for_log(store, total)


def seed(store: EventStore, accounts: int, deposits: int) -> dict[str, int]:
    expected: dict[str, int] = {}
    for _ in range(accounts):
        account = ContractAccount.open(fresh_id(), "x")
        for amount in range(1, deposits + 1):
            account.deposit(amount)
        store.save(account)
        expected[account.stream_id] = account.balance
    settle(store)
    return expected


def test_catch_up_and_status(engine: Engine) -> None:
    store = EventStore(engine)
    expected = seed(store, 3, 4)
    store.append("Other-1", [Opened("not mine")], expected_version=0)
    settle(store)
    runner = ProjectionRunner(engine, Balances(), page_size=4)
    assert runner.status().behind == 15
    assert runner.catch_up() == 15
    assert balances_now(runner) == expected
    status = runner.status()
    assert (status.generation, status.events_done, status.behind) == (1, 15, 0)
    more = seed(store, 1, 2)
    assert runner.catch_up() == 3
    assert balances_now(runner) == {**expected, **more}


def test_a_failing_page_commits_neither_model_nor_checkpoint(engine: Engine) -> None:
    store = EventStore(engine)
    expected = seed(store, 2, 3)
    projection = Balances()
    projection.fail_on_amount = 3
    runner = ProjectionRunner(engine, projection, page_size=100)
    with pytest.raises(RuntimeError, match="cannot take"):
        runner.catch_up()
    assert balances_now(runner) == {}
    assert runner.status().events_done == 0
    projection.fail_on_amount = None
    assert runner.catch_up() == 8
    assert balances_now(runner) == expected, "no event applied twice"


def test_follow_live_until_stopped(engine: Engine) -> None:
    store = EventStore(engine)
    runner = ProjectionRunner(engine, Balances())
    stop = threading.Event()
    handled: list[int] = []
    follower = threading.Thread(target=lambda: handled.append(runner.follow(stop, interval=0.01)))
    follower.start()
    expected = seed(store, 2, 2)
    while runner.status().behind:
        stop.wait(0.01)
    stop.set()
    follower.join()
    assert handled == [6]
    assert balances_now(runner) == expected


def test_rebuild_switches_over_only_when_caught_up(engine: Engine) -> None:
    store = EventStore(engine)
    expected = seed(store, 4, 5)
    runner = ProjectionRunner(engine, Balances(), page_size=5)
    runner.catch_up()
    # Corrupt the live model to prove the rebuild recomputes it from the log.
    with engine.begin() as conn:
        table = runner.read_model(conn)["balances"]
        conn.execute(sql_update(table).values(balance=-1))
    stale = balances_now(runner)
    seen_by_readers: list[dict[str, int]] = []
    reports: list[Progress] = []

    def progress(report: Progress) -> None:
        reports.append(report)
        seen_by_readers.append(balances_now(runner))

    assert runner.rebuild(progress) == 24
    assert all(view == stale for view in seen_by_readers[:-1]), "readers kept the old model"
    assert balances_now(runner) == expected
    assert runner.status().generation == 2
    assert [r.done for r in reports] == sorted(r.done for r in reports)
    assert reports[-1].done == 24 and reports[-1].total == 24
    assert all(r.rate > 0 for r in reports)
    with engine.connect() as conn:
        assert not engine.dialect.has_table(conn, "balances_g1"), "old generation dropped"


def test_configuration_errors(engine: Engine) -> None:
    class Nameless(Projection):
        pass

    with pytest.raises(ConfigurationError, match="needs a `name`"):
        ProjectionRunner(engine, Nameless())
    app = Projections(engine, [Balances()])
    with pytest.raises(ConfigurationError, match="no projection named 'nope'; known: balances"):
        app.runner("nope")


async def test_asyncio_runner(sqlite_async_engine: AsyncEngine, sqlite_sync_engine: Engine) -> None:
    default_schema.create_all(sqlite_sync_engine)
    expected = seed(EventStore(sqlite_sync_engine), 2, 3)
    runner = AsyncProjectionRunner(sqlite_async_engine, Balances(), page_size=3)
    assert await runner.catch_up() == 8
    async with sqlite_async_engine.connect() as conn:
        table = (await runner.read_model(conn))["balances"]
        rows = (await conn.execute(select(table))).all()
    assert {row.account: row.balance for row in rows} == expected


def test_a_projection_can_start_from_a_checkpoint(engine: Engine) -> None:
    store = EventStore(engine)
    before = seed(store, 2, 1)
    (last,) = store.read_log(limit=1000).entries[-1:]
    after = seed(store, 1, 2)
    runner = ProjectionRunner(engine, Balances(), start=last.checkpoint)
    assert runner.catch_up() == 3
    assert balances_now(runner) == after
    assert runner.rebuild() == 3, "a rebuild starts from the same checkpoint"
    assert set(balances_now(runner)).isdisjoint(before)
