"""Reading the next page ahead while a full one is handled, on SQLite and PostgreSQL.

A page read ahead is only a read: it is used if the page before it committed its checkpoint
(the next read starts where the read ahead did), and read again otherwise.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from tidings import Handlers, Timing
from tidings.outbox import Relay, RelayConfig, RetryPolicy, SubscriberPolicy
from tidings.outbox.delivery import Follower

from .app import Deposited, deposit, effects, failing_once, ledger_handlers
from .conftest import Store
from .test_contract import FakeClock, per_stream_versions

KEY = ("ledger", 0)


def _filled(
    store: Store,
    deposits: int,
    handlers: Handlers | None = None,
    *,
    accounts: int = 1,
    **kwargs: Any,
) -> RelayConfig:
    """One partition, pages of 5, and ``deposits`` events committed over ``accounts`` streams."""
    config = RelayConfig(
        store.engine, handlers or ledger_handlers("ledger"), partitions=1, batch_size=5, **kwargs
    )
    for seq in range(deposits):
        deposit(config, f"acc-{seq % accounts}", 1, seq)
    return config


def _readers(relay: Relay) -> list[str]:
    """Record, for every page the relay's follower reads, the thread that read it."""
    follower = relay.follower
    page = follower._page
    threads: list[str] = []

    def recorded(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return page(*args)

    follower._page = recorded  # type: ignore[method-assign]
    return threads


def test_pages_after_a_full_one_are_read_ahead_and_everything_is_delivered_once(
    store: Store,
) -> None:
    config = _filled(store, 23, accounts=4)
    relay = Relay(config)
    threads = _readers(relay)
    assert relay.run_until_idle() == 23

    # The first page inline, the four after a full page ahead, then the empty read after the
    # last (short) page: read again inline, it finds nothing and the relay is idle.
    ahead = [name.startswith("tidings-read-ahead") for name in threads]
    assert ahead[:5] == [False, True, True, True, True], threads
    found = effects(store.engine)
    assert sorted(e.seq for e in found) == list(range(23))
    for versions in per_stream_versions(found).values():
        assert versions == list(range(1, len(versions) + 1))
    relay.follower.close()


def test_a_page_read_ahead_that_found_nothing_is_read_again(store: Store) -> None:
    config = _filled(store, 5)
    relay = Relay(config)
    assert relay.step() == 5  # a full page: the next one is read ahead...
    _, reading = relay.follower._ahead[KEY]
    ahead = reading.result()
    assert ahead.rows == []  # ...and finds nothing, before this deposit commits
    deposit(config, "acc-0", 1, 5)
    assert relay.step() == 1  # not an idle relay until the next poll
    assert sorted(e.seq for e in effects(store.engine)) == list(range(6))
    relay.follower.close()


def test_a_page_read_ahead_of_an_uncommitted_checkpoint_is_not_used(store: Store) -> None:
    """The third event fails and waits for a delayed retry: the checkpoint stays before it,
    and the page read ahead from the end of its page must not be delivered in its place."""
    clock = FakeClock()
    handlers = Handlers()
    flaky, _ = failing_once("ledger", seq=2)
    handlers.add(Deposited, flaky, when=Timing.AFTER_COMMIT, name="ledger")
    # Due within a second: before the relay's next lease refresh, which would forget the read
    # ahead anyway.
    policy = SubscriberPolicy(RetryPolicy(immediate=0, delayed=1, base_delay=1.0))
    config = _filled(store, 12, handlers, default_policy=policy)
    relay = Relay(config, clock=clock)
    relay.run_until_idle()
    assert [e.seq for e in effects(store.engine)] == [0, 1]  # the rest waits behind seq 2
    assert KEY in relay.follower._ahead
    clock.advance(1.0)
    relay.run_until_idle()
    assert [e.seq for e in effects(store.engine)] == list(range(12))
    relay.follower.close()


def test_a_read_ahead_that_failed_is_read_again_inline(store: Store) -> None:
    config = _filled(store, 12)
    relay = Relay(config)
    read = relay.follower._read

    def outage_ahead(*args: Any) -> Any:
        if threading.current_thread().name.startswith("tidings-read-ahead"):
            raise ConnectionError("database away (read ahead only)")
        return read(*args)

    relay.follower._read = outage_ahead  # type: ignore[method-assign]
    assert relay.run_until_idle() == 12
    assert [e.seq for e in effects(store.engine)] == list(range(12))
    relay.follower.close()


def test_no_read_ahead_where_other_threads_cannot_read(sqlite_sync_engine: Engine) -> None:
    memory = create_engine("sqlite://")
    try:
        assert not Follower(RelayConfig(memory, Handlers()), clock=FakeClock())._reads_ahead
    finally:
        memory.dispose()
    on_file = RelayConfig(sqlite_sync_engine, Handlers())
    assert Follower(on_file, clock=FakeClock())._reads_ahead
    off = RelayConfig(sqlite_sync_engine, Handlers(), read_ahead=False)
    assert not Follower(off, clock=FakeClock())._reads_ahead


@pytest.mark.parametrize("pages", [1, 3])
def test_closing_waits_for_a_read_in_flight(store: Store, pages: int) -> None:
    config = _filled(store, 5 * pages)
    before = set(threading.enumerate())
    relay = Relay(config)
    relay.run_until_idle()
    relay.follower.close()  # the last read ahead may still be running: joined, not leaked
    assert not [t for t in set(threading.enumerate()) - before if "read-ahead" in t.name]
