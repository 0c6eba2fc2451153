"""A running relay keeps its leases (and applies retention) in a thread of its own; writers'
units of work share one ORM session class per engine."""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import select

from tidings.outbox import Relay, RelayConfig
from tidings.outbox import tables as outbox_tables
from tidings.persistence.sql import SqlUnitOfWork

from .app import deposit, effects, ledger_handlers
from .conftest import Store


def _wait_for(condition: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds}s")
        time.sleep(0.02)


def _lease_rows(store: Store) -> list[Any]:
    lease = outbox_tables.leases
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                select(lease.c.owner, lease.c.expires_at).where(lease.c.subscriber == "ledger")
            )
        )


def _upkeep_threads(relay: Relay) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"{relay.node}-upkeep"]


def test_renew_reports_the_leases_without_taking_them_over(store: Store) -> None:
    config = RelayConfig(store.engine, ledger_handlers("ledger"), partitions=2)
    relay = Relay(config, node="renewing")
    relay.prepare()
    renewed = relay.leases.renew(["ledger"], 2)
    assert renewed == {"ledger": {0, 1}}
    assert relay.leases.held == {}  # the caller decides when to adopt them
    assert {owner for owner, _ in _lease_rows(store)} == {"renewing"}


def test_a_running_relay_renews_its_leases_in_the_background_and_delivers(
    store: Store,
) -> None:
    lease_seconds = 1.5
    config = RelayConfig(
        store.engine, ledger_handlers("ledger"), partitions=2, lease_seconds=lease_seconds
    )
    relay = Relay(config, node="kept")
    relay.prepare()
    relay.start()
    try:
        _wait_for(lambda: len(_upkeep_threads(relay)) == 1)
        # Several lease periods later the leases are still ours and unexpired, and delivery
        # goes on with the leases the upkeep thread handed over.
        time.sleep(2 * lease_seconds)
        rows = _lease_rows(store)
        assert {owner for owner, _ in rows} == {"kept"}
        assert all(expires_at > time.time() for _, expires_at in rows)
        assert relay.leases.held == {"ledger": {0, 1}}
        for seq in range(6):
            deposit(config, f"acc-{seq % 3}", 1, seq)
        _wait_for(lambda: len(effects(store.engine, "ledger")) == 6)
    finally:
        relay.stop()
    assert _upkeep_threads(relay) == []
    assert {owner for owner, _ in _lease_rows(store)} == {None}  # released on the way out


def test_units_of_work_on_one_engine_share_their_session_class(store: Store) -> None:
    # A class per unit of work would make SQLAlchemy build its event dispatch again for every
    # commit (about as costly as the flush).
    first = SqlUnitOfWork(store.engine)
    second = SqlUnitOfWork(store.engine)
    with first, second:
        assert type(first.session) is type(second.session)
