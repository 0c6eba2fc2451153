"""The outbox contract, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import delete, func, insert, select, update

from tidings import HandlerContext, Handlers, Timing, default_registry, uuid7
from tidings.core.envelope import system_clock
from tidings.outbox import (
    DeadLetterError,
    DeadLetters,
    OnFailure,
    Relay,
    RelayConfig,
    RetryPolicy,
    SubscriberPolicy,
    outbox_table,
    purge_delivered,
    status,
)
from tidings.outbox import tables as outbox_tables
from tidings.persistence.sql import SqlUnitOfWork

from .app import (
    Account,
    Deposited,
    Effect,
    LedgerBug,
    Noted,
    deposit,
    effects,
    failing_once,
    ledger_handlers,
    record_effect,
    wait_for,
)
from .conftest import Store


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def outbox_rows(store: Store) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(outbox_table).order_by(outbox_table.c.position)))


def config_for(store: Store, handlers: Handlers | None = None, **kwargs: Any) -> RelayConfig:
    kwargs.setdefault("partitions", 3)
    return RelayConfig(store.engine, handlers or ledger_handlers("ledger"), **kwargs)


def deliver(config: RelayConfig) -> int:
    """Run a relay until nothing is due (always the same node, as a restarted process is)."""
    return Relay(config, node="test-relay").run_until_idle()


def per_stream_versions(found: list[Effect]) -> dict[str, list[int]]:
    streams: dict[str, list[int]] = defaultdict(list)
    for effect in found:
        streams[effect.stream_id].append(effect.stream_version)
    return streams


# -- writing ---------------------------------------------------------------------------------


def test_outbox_row_exists_iff_the_transaction_commits(store: Store) -> None:
    handlers = ledger_handlers("ledger")

    @handlers.in_transaction(Deposited)
    def veto(deposited: Deposited) -> None:
        if deposited.amount < 0:
            raise ValueError("negative deposit")

    config = config_for(store, handlers)
    deposit(config, "acc-1", 10, seq=1)
    with pytest.raises(ValueError, match="negative deposit"):
        deposit(config, "acc-1", -5, seq=2)
    with config.unit_of_work() as uow:  # left without commit: rolled back
        account = uow.get(Account, "acc-1")
        assert account is not None
        account.deposit(7, seq=3)
    with config.unit_of_work() as uow:  # no after-commit subscriber: no row
        account = uow.get(Account, "acc-1")
        assert account is not None
        account.record(Noted(account="acc-1"))
        uow.commit()

    rows = outbox_rows(store)
    assert len(rows) == 1
    row = rows[0]
    stored = outbox_tables.stored_from_row(row._mapping)
    assert stored.event_type == "tests.outbox.Deposited"
    assert stored.stream_id == "Account-acc-1"
    assert stored.stream_version == 1
    assert stored.payload == b'{"account":"acc-1","amount":10,"seq":1}'
    assert row.recorded_at is not None


def test_rows_for_a_bus_are_written_without_subscribers(store: Store) -> None:
    config = config_for(store, Handlers(), to_bus=lambda env: env.event_type.endswith("Noted"))
    with config.unit_of_work() as uow:
        account = uow.add(Account(id="acc-1", balance=0, version=0))
        account.record(Noted(account="acc-1"))
        account.deposit(1, seq=1)
        uow.commit()
    assert [row.event_type for row in outbox_rows(store)] == ["tests.outbox.Noted"]


# -- delivering ------------------------------------------------------------------------------


def test_every_subscriber_gets_every_event_once_in_stream_order(store: Store) -> None:
    config = config_for(store, ledger_handlers("ledger", "audit"))
    rng = random.Random(3)
    for seq in range(60):
        deposit(config, f"acc-{rng.randrange(7)}", 1, seq)
    relay = Relay(config)
    relay.run_until_idle()
    relay.run_until_idle()  # nothing new: nothing applied again

    for name in ("ledger", "audit"):
        found = effects(store.engine, name)
        assert sorted(e.seq for e in found) == list(range(60))
        for versions in per_stream_versions(found).values():
            assert versions == sorted(versions)
            assert versions == list(range(1, len(versions) + 1))
        assert {e.delivery_id for e in found} == {f"{name}:{e.event_id}" for e in found}


class Crash(BaseException):
    """Stands for the process dying mid-transaction (not an Exception: nothing catches it)."""


def test_redelivery_after_a_crash_applies_nothing_twice(store: Store) -> None:
    crash_on = {5}
    seen: list[int] = []
    handlers = Handlers()
    book = record_effect("ledger")

    def crashing(deposited: Deposited, ctx: HandlerContext) -> None:
        book(deposited, ctx)  # the effect is written...
        seen.append(deposited.seq)
        if deposited.seq in crash_on:
            crash_on.clear()
            raise Crash  # ...and the process dies before the commit

    handlers.add(Deposited, crashing, when=Timing.AFTER_COMMIT, name="ledger")
    config = config_for(store, handlers, partitions=1, batch_size=4)
    for seq in range(10):
        deposit(config, "acc-1", 1, seq)

    with pytest.raises(Crash):
        Relay(config, node="worker-1").run_until_idle()
    # Restarted under the same node name, it resumes its own lease at once.
    Relay(config, node="worker-1").run_until_idle()

    assert [e.seq for e in effects(store.engine)] == list(range(10))
    assert seen.count(4) == 2  # seq 4 shared the crashed batch: delivered twice, applied once


def test_relay_wakes_in_process_without_polling(store: Store) -> None:
    config = config_for(store, poll_interval=60.0, min_poll_interval=60.0, listen=False)
    relay = Relay(config)
    relay.prepare()
    relay.start()
    try:
        deposit(config, "acc-1", 1, seq=1)
        wait_for(lambda: len(effects(store.engine)) == 1)
    finally:
        relay.stop()


def test_a_relay_that_caught_up_waits_for_the_next_commit_instead_of_reading_again(
    store: Store,
) -> None:
    """A page shorter than the batch held everything committed when it was read: the relay
    waits for the next ring (or poll) rather than reading again at once, which would find
    nothing. A full page is followed by the next read at once."""
    import time

    config = config_for(
        store, poll_interval=60.0, min_poll_interval=60.0, listen=False, partitions=1, batch_size=2
    )
    relay = Relay(config)
    reads: list[int] = []
    read = relay.follower._read

    def counted(start: Any) -> Any:
        rows = read(start)
        reads.append(len(rows))
        return rows

    relay.follower._read = counted  # type: ignore[method-assign]
    relay.prepare()
    relay.start()
    try:
        wait_for(lambda: reads == [0])  # nothing yet: waiting for a ring
        deposit(config, "acc-1", 1, seq=1)
        wait_for(lambda: len(effects(store.engine)) == 1)
        time.sleep(0.2)
        assert reads == [0, 1]
        with config.unit_of_work() as uow:
            account = uow.add(Account(id="acc-2", balance=0, version=0))
            for seq in (2, 3, 4):
                account.deposit(1, seq)
            uow.commit()
        wait_for(lambda: len(effects(store.engine)) == 4)
        time.sleep(0.2)
        assert sorted(reads[2:]) == [1, 2]  # a full page, then the rest at once
    finally:
        relay.stop()


def test_a_running_relay_goes_on_with_the_page_after_a_delayed_retry(store: Store) -> None:
    """An event delivered alone once its delayed retry is due leaves the rest of its page due
    now: the relay reads on at once, not at the next ring or poll."""
    handlers = Handlers()
    fails_once, failures = failing_once("ledger", seq=1)
    handlers.add(Deposited, fails_once, when=Timing.AFTER_COMMIT, name="ledger")
    policy = RetryPolicy(immediate=0, delayed=2, base_delay=0.05, max_delay=0.05, seed=1)
    config = config_for(
        store,
        handlers,
        partitions=1,
        default_policy=SubscriberPolicy(policy),
        poll_interval=60.0,
        min_poll_interval=60.0,
        listen=False,
    )
    relay = Relay(config)
    relay.prepare()
    relay.start()
    try:
        with config.unit_of_work() as uow:
            account = uow.add(Account(id="acc-1", balance=0, version=0))
            for seq in (1, 2, 3):
                account.deposit(1, seq)
            uow.commit()
        wait_for(lambda: len(effects(store.engine)) == 3, seconds=10)
        assert [e.seq for e in effects(store.engine)] == [1, 2, 3]
        assert failures == [1]
    finally:
        relay.stop()


# -- failure -----------------------------------------------------------------------------------


def test_retry_schedule_is_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(immediate=2, delayed=4, base_delay=1.0, max_delay=5.0, seed=42)
    expected_rng = random.Random(42)
    ceilings = [1.0, 2.0, 4.0, 5.0]
    expected = [0.0, 0.0] + [expected_rng.uniform(0.0, c) for c in ceilings]
    assert policy.schedule() == expected
    assert RetryPolicy(immediate=0, delayed=0).schedule() == []
    assert policy.max_attempts == 7
    with pytest.raises(ValueError, match="attempt numbers start at 1"):
        policy.delay_after(0)


def test_bad_policy_values_are_named() -> None:
    from tidings import ConfigurationError

    with pytest.raises(ConfigurationError, match="immediate"):
        RetryPolicy(immediate=-1)
    with pytest.raises(ConfigurationError, match="delays must be >= 0"):
        RetryPolicy(base_delay=-1.0)


def test_handler_failing_n_times_then_succeeding_follows_the_schedule(store: Store) -> None:
    clock = FakeClock()
    attempts: list[tuple[int, float]] = []
    handlers = Handlers()
    book = record_effect("ledger")

    def flaky(deposited: Deposited, ctx: HandlerContext) -> None:
        if deposited.seq != 1:
            book(deposited, ctx)
            return
        attempts.append((ctx.attempt, clock.now))
        if ctx.attempt <= 4:
            raise ConnectionError(f"flaky attempt {ctx.attempt}")
        book(deposited, ctx)

    handlers.add(Deposited, flaky, when=Timing.AFTER_COMMIT, name="ledger")
    policy = RetryPolicy(immediate=1, delayed=5, base_delay=10.0, max_delay=100.0, seed=9)
    schedule = RetryPolicy(immediate=1, delayed=5, base_delay=10.0, max_delay=100.0, seed=9)
    delays = schedule.schedule()
    config = config_for(store, handlers, partitions=1, default_policy=SubscriberPolicy(policy))
    deposit(config, "acc-1", 1, seq=1)
    deposit(config, "acc-2", 1, seq=2)  # same partition: waits behind the retry
    relay = Relay(config, clock=clock)

    relay.run_until_idle()  # attempt 1, immediate attempt 2, then a delayed retry is pending
    assert [a for a, _ in attempts] == [1, 2]
    for expected_attempt in (3, 4, 5):
        wait = relay.next_retry_in()
        assert wait is not None
        assert wait == pytest.approx(delays[expected_attempt - 2])
        clock.advance(wait * 0.5)
        relay.run_until_idle()
        assert attempts[-1][0] == expected_attempt - 1  # not due yet: nothing ran
        assert effects(store.engine) == []  # and seq 2 waits behind it
        clock.advance(wait * 0.5 + 1e-6)
        relay.run_until_idle()
        assert attempts[-1][0] == expected_attempt
    assert [a for a, _ in attempts] == [1, 2, 3, 4, 5]
    assert relay.next_retry_in() is None
    found = effects(store.engine)
    assert [e.seq for e in found] == [1, 2]
    assert DeadLetters(store.engine).find() == []


def test_a_restarted_relay_continues_the_retry_schedule(store: Store) -> None:
    """Attempt counts and failures live in the database: a relay restarted (or another one
    taking the partition over) continues where the schedule was, and the dead letter counts
    every attempt."""
    clock = FakeClock()
    attempts: list[int] = []
    handlers = Handlers()

    def always_failing(deposited: Deposited, ctx: HandlerContext) -> None:
        attempts.append(ctx.attempt)
        raise ConnectionError(f"down, attempt {ctx.attempt}")

    handlers.add(Deposited, always_failing, when=Timing.AFTER_COMMIT, name="ledger")
    policy = RetryPolicy(immediate=1, delayed=3, base_delay=10.0, max_delay=100.0, seed=3)
    config = config_for(store, handlers, partitions=1, default_policy=SubscriberPolicy(policy))
    deposit(config, "acc-1", 1, seq=1)

    first = Relay(config, node="first", clock=clock)
    first.run_until_idle()  # attempts 1 and 2 (immediate), then a delayed retry is pending
    wait = first.next_retry_in()
    assert wait is not None
    clock.advance(wait + 1e-6)
    first.run_until_idle()  # attempt 3, then the next delayed retry
    assert attempts == [1, 2, 3]
    [ledger] = status(store.engine)["subscribers"]
    [retrying] = ledger["retrying"]  # operators see it too
    assert retrying["partition"] == 0 and retrying["next_attempt"] == 4
    first.leases.release_all()
    first.follower.close()

    # A new process: nothing in memory. It must not start over at attempt 1.
    second = Relay(config, node="second", clock=clock)
    second.run_until_idle()
    assert attempts == [1, 2, 3], "the stored retry was not due yet"
    for _ in range(5):
        wait = second.next_retry_in()
        if wait is None:
            break
        clock.advance(wait + 1e-6)
        second.run_until_idle()
    assert attempts == [1, 2, 3, 4, 5]
    [letter] = DeadLetters(store.engine).find()
    assert letter.attempts == 5
    assert letter.exception_message == "down, attempt 5"
    assert letter.first_failure_at is not None and letter.last_failure_at is not None
    assert letter.first_failure_at < letter.last_failure_at
    assert second.next_retry_in() is None
    assert status(store.engine)["subscribers"][0]["retrying"] == []


def test_poison_message_is_dead_lettered_and_the_rest_flows(store: Store) -> None:
    handlers = Handlers()
    book = record_effect("ledger")

    def poisoned(deposited: Deposited, ctx: HandlerContext) -> None:
        if deposited.seq == 3:
            raise LedgerBug("poison")
        book(deposited, ctx)

    handlers.add(Deposited, poisoned, when=Timing.AFTER_COMMIT, name="ledger")
    config = config_for(store, handlers, default_policy=SubscriberPolicy(RetryPolicy(1, 0)))
    for seq in range(6):
        deposit(config, "acc-1", 1, seq)
    deliver(config)

    assert [e.seq for e in effects(store.engine)] == [0, 1, 2, 4, 5]
    [letter] = DeadLetters(store.engine).find()
    assert letter.subscriber == "ledger"
    assert letter.status == "failed"
    assert letter.reason == "handler"
    assert letter.attempts == 2
    assert letter.exception_type is not None
    assert letter.exception_type.endswith("LedgerBug")
    assert letter.exception_message == "poison"
    assert letter.traceback is not None
    assert "poisoned" in letter.traceback
    assert letter.first_failure_at is not None
    assert letter.last_failure_at is not None
    assert letter.first_failure_at <= letter.last_failure_at
    original = outbox_tables.stored_from_row(outbox_rows(store)[3]._mapping)
    assert letter.stored == original  # whole: metadata, headers, payload bytes


def test_always_failing_then_fixed_then_replayed_once(store: Store) -> None:
    handlers = ledger_handlers("ledger")
    config = config_for(store, handlers, default_policy=SubscriberPolicy(RetryPolicy(0, 0)))
    from . import app

    app.BROKEN.add("acc-bad")
    try:
        deposit(config, "acc-bad", 1, seq=1)
        deposit(config, "acc-ok", 1, seq=2)
        deliver(config)
        [letter] = DeadLetters(store.engine).find()
        with pytest.raises(DeadLetterError, match="failed again"):
            DeadLetters(store.engine).replay(config, letter.id)
        again = DeadLetters(store.engine).get(letter.id)
        assert again.attempts == letter.attempts + 1
    finally:
        app.BROKEN.discard("acc-bad")

    DeadLetters(store.engine).replay(config, letter.id)
    found = effects(store.engine)
    assert sorted(e.seq for e in found) == [1, 2]
    replayed = next(e for e in found if e.seq == 1)
    assert replayed.event_id == str(letter.stored.event_id)
    assert replayed.delivery_id == f"ledger:{letter.stored.event_id}"
    with pytest.raises(DeadLetterError, match="no dead letter"):
        DeadLetters(store.engine).replay(config, letter.id)
    assert len(effects(store.engine)) == 2


@pytest.mark.parametrize("mode", [OnFailure.SKIP, OnFailure.PARK])
def test_skip_or_park_the_stream(store: Store, mode: OnFailure) -> None:
    from . import app

    config = config_for(store, default_policy=SubscriberPolicy(RetryPolicy(0, 0), on_failure=mode))
    app.BROKEN_SEQS.add(1)
    try:
        deposit(config, "acc-1", 1, seq=1)  # fails
        deposit(config, "acc-1", 1, seq=2)  # would succeed
        deposit(config, "acc-1", 1, seq=3)
        deposit(config, "acc-2", 1, seq=4)  # another stream
        deliver(config)
    finally:
        app.BROKEN_SEQS.discard(1)

    letters = DeadLetters(store.engine)
    [failed] = letters.find()
    if mode is OnFailure.SKIP:
        assert sorted(e.seq for e in effects(store.engine)) == [2, 3, 4]
        assert letters.find(status="held") == []
        letters.replay(config, failed.id)
        assert sorted(e.seq for e in effects(store.engine)) == [1, 2, 3, 4]
        return
    assert [e.seq for e in effects(store.engine)] == [4]
    held = letters.find(status="held")
    assert [h.stored.stream_version for h in held] == [2, 3]
    with pytest.raises(DeadLetterError, match="waits behind"):
        letters.replay(config, held[0].id)
    # More events for the parked stream keep waiting behind it.
    deposit(config, "acc-1", 1, seq=5)
    deliver(config)
    assert len(letters.find(status="held")) == 3

    released = letters.replay(config, failed.id)
    assert len(released) == 3
    acc1 = [e for e in effects(store.engine) if e.stream_id == "Account-acc-1"]
    assert [e.seq for e in acc1] == [1, 2, 3, 5]
    assert letters.find(status=None) == []
    with store.engine.connect() as conn:
        parked = conn.execute(select(func.count()).select_from(outbox_tables.parked_streams))
        assert parked.scalar_one() == 0
    deposit(config, "acc-1", 1, seq=6)  # the stream flows normally again
    deliver(config)
    assert effects(store.engine)[-1].seq == 6


def test_released_held_messages_get_the_immediate_retries(store: Store) -> None:
    from . import app

    calls: list[int] = []
    book = app.record_effect("ledger")

    def flaky_after_release(deposited: Deposited, ctx: HandlerContext) -> None:
        calls.append(deposited.seq)
        if deposited.seq == 2 and calls.count(2) == 1:
            raise ConnectionError("a blip on the first try")
        book(deposited, ctx)

    handlers = Handlers()
    handlers.add(Deposited, flaky_after_release, when=Timing.AFTER_COMMIT, name="ledger")
    policy = SubscriberPolicy(RetryPolicy(immediate=1, delayed=0), on_failure=OnFailure.PARK)
    config = config_for(store, handlers, default_policy=policy)
    app.BROKEN_SEQS.add(1)
    try:
        for seq in (1, 2, 3):
            deposit(config, "acc-1", 1, seq=seq)
        deliver(config)
    finally:
        app.BROKEN_SEQS.discard(1)
    letters = DeadLetters(store.engine)
    [failed] = letters.find()
    assert len(letters.find(status="held")) == 2

    released = letters.replay(config, failed.id)
    assert len(released) == 2, "seq 2 failed once on release, then its retry succeeded"
    assert [e.seq for e in effects(store.engine)] == [1, 2, 3]
    assert letters.find(status=None) == []


def test_discarding_the_head_releases_the_parked_stream(store: Store) -> None:
    from . import app

    config = config_for(
        store, default_policy=SubscriberPolicy(RetryPolicy(0, 0), on_failure=OnFailure.PARK)
    )
    app.BROKEN_SEQS.add(1)
    try:
        deposit(config, "acc-1", 1, seq=1)
        deposit(config, "acc-1", 1, seq=2)
        deliver(config)
    finally:
        app.BROKEN_SEQS.discard(1)
    letters = DeadLetters(store.engine)
    [failed] = letters.find()
    with pytest.raises(DeadLetterError, match="pass the application"):
        letters.discard(failed.id)
    assert letters.discard(failed.id, config) != []
    assert [e.seq for e in effects(store.engine)] == [2]
    assert letters.find(status=None) == []


def _insert_raw(store: Store, **overrides: Any) -> None:
    values: dict[str, Any] = {
        "event_id": uuid7(),
        "event_type": "tests.outbox.Deposited",
        "event_version": 1,
        "stream_id": "Account-raw",
        "stream_version": 1,
        "occurred_at": system_clock(),
        "correlation_id": uuid4(),
        "causation_id": None,
        "producer": None,
        "headers": '{"trace": "abc"}',
        "payload": b'{"account":"raw","amount":1,"seq":100}',
        "recorded_at": system_clock(),
    }
    values.update(overrides)
    with store.engine.begin() as conn:
        conn.execute(insert(outbox_table).values(values))


def test_undecodable_messages_are_dead_lettered_and_the_relay_keeps_going(store: Store) -> None:
    config = config_for(store, partitions=1)
    if not default_registry.upcaster_for("tests.outbox.Deposited", 0):
        default_registry.add_upcaster("tests.outbox.Deposited", 0, _broken_upcaster)
    _insert_raw(store, event_type="tests.outbox.NoSuchEvent", stream_id="s-1")
    _insert_raw(store, payload=b"\xff not json", stream_id="s-2")
    _insert_raw(store, event_version=0, stream_id="s-3")
    deposit(config, "acc-1", 1, seq=1)
    deliver(config)

    assert [e.seq for e in effects(store.engine)] == [1]
    letters = DeadLetters(store.engine).find()
    assert [letter.reason for letter in letters] == ["undecodable"] * 3
    messages = [letter.exception_message or "" for letter in letters]
    assert "unknown event type 'tests.outbox.NoSuchEvent'" in messages[0]
    assert "not valid JSON" in messages[1]
    assert "upcaster from version 0 raised" in messages[2]
    assert letters[1].stored.payload == b"\xff not json"
    assert letters[0].stored.headers == {"trace": "abc"}
    assert [letter.exception_type for letter in letters] == [
        "tidings.errors.UnknownEventType",
        "tidings.errors.PayloadError",
        "tidings.errors.EventVersionError",
    ]
    assert [letter.attempts for letter in letters] == [0, 0, 0]  # never retried


def _broken_upcaster(data: dict[str, Any]) -> dict[str, Any]:
    raise KeyError("amount_in_cents")


# -- retention and status --------------------------------------------------------------------


def test_retention_deletes_only_delivered_rows_past_the_period(store: Store) -> None:
    config = config_for(store, partitions=1)
    for seq in range(4):
        deposit(config, "acc-1", 1, seq)
    old = system_clock() - timedelta(days=8)
    with store.engine.begin() as conn:
        conn.execute(
            update(outbox_table).where(outbox_table.c.position <= 3).values(recorded_at=old)
        )
    assert purge_delivered(store.engine, outbox_table, timedelta(days=7)) == 0  # none delivered
    relay = Relay(config)
    relay.config.retention_interval = 3600.0
    relay._next_retention = float("inf")
    relay.run_until_idle()
    deposit(config, "acc-1", 1, seq=9)  # undelivered
    with store.engine.begin() as conn:
        conn.execute(update(outbox_table).values(recorded_at=old))
    assert purge_delivered(store.engine, outbox_table, timedelta(days=7)) == 4
    assert [r.stream_version for r in outbox_rows(store)] == [5]


def _delivered(store: Store, count: int) -> tuple[RelayConfig, Relay]:
    """``count`` deposits on one stream, delivered by a relay that leaves retention alone."""
    config = config_for(store, partitions=1)
    for seq in range(count):
        deposit(config, "acc-1", 1, seq)
    relay = Relay(config)
    relay._next_retention = float("inf")
    relay.run_until_idle()
    return config, relay


def test_retention_deletes_in_chunks_and_never_past_the_checkpoint(store: Store) -> None:
    config, _ = _delivered(store, 7)
    deposit(config, "acc-1", 1, seq=9)  # undelivered
    old = system_clock() - timedelta(days=8)
    with store.engine.begin() as conn:
        conn.execute(update(outbox_table).values(recorded_at=old))
    # 7 delivered rows in chunks of 3: 3 + 3 + 1, and the undelivered one stays.
    assert purge_delivered(store.engine, outbox_table, timedelta(days=7), chunk=3) == 7
    assert [r.stream_version for r in outbox_rows(store)] == [8]
    assert purge_delivered(store.engine, outbox_table, timedelta(days=7), chunk=3) == 0
    with pytest.raises(ValueError, match="chunk"):
        purge_delivered(store.engine, outbox_table, timedelta(days=7), chunk=0)


def test_status_reports_backlog_lag_and_dead_letters(store: Store) -> None:
    from . import app

    config = config_for(
        store,
        ledger_handlers("ledger", "audit"),
        partitions=2,
        default_policy=SubscriberPolicy(RetryPolicy(0, 0)),
        policies={"audit": SubscriberPolicy(RetryPolicy(0, 0), on_failure=OnFailure.PARK)},
    )
    relay = Relay(config, clock=FakeClock())
    relay.prepare()
    for seq in range(5):
        deposit(config, f"acc-{seq}", 1, seq)
    before = status(store.engine)
    assert before["backlog"] == 5
    assert before["oldest_undelivered_age_seconds"] is not None
    assert before["oldest_undelivered_age_seconds"] >= 0
    assert {s["subscriber"]: s["lag"] for s in before["subscribers"]} == {"audit": 5, "ledger": 5}

    app.BROKEN.add("acc-0")
    try:
        relay.run_until_idle()
    finally:
        app.BROKEN.discard("acc-0")
    after = status(store.engine)
    assert after["backlog"] == 0
    assert after["oldest_undelivered_age_seconds"] is None
    assert after["dead_letters"] == 2  # ledger and audit both failed on acc-0
    by_name = {s["subscriber"]: s for s in after["subscribers"]}
    assert by_name["ledger"]["lag"] == 0
    assert by_name["ledger"]["dead_letters"] == 1
    assert by_name["audit"]["dead_letters"] == 1


# -- several relays --------------------------------------------------------------------------


def test_two_relays_share_partitions_and_take_over_from_a_dead_one(store: Store) -> None:
    clock = FakeClock()
    config = config_for(store, partitions=4, lease_seconds=10.0)
    first, second = (
        Relay(config, node="first", clock=clock),
        Relay(config, node="second", clock=clock),
    )
    first.step()
    assert first.leases.held["ledger"] == {0, 1, 2, 3}  # alone: takes everything
    second.step()
    assert second.leases.held["ledger"] == set()  # nothing free yet
    clock.advance(4.0)
    first.step()  # now sees two live nodes: keeps its share, releases the rest
    second.step()
    assert len(first.leases.held["ledger"]) == 2
    assert first.leases.held["ledger"].isdisjoint(second.leases.held["ledger"])
    assert first.leases.held["ledger"] | second.leases.held["ledger"] == {0, 1, 2, 3}

    for seq in range(40):
        deposit(config, f"acc-{seq % 9}", 1, seq)
    first.run_until_idle()
    second.run_until_idle()
    assert sorted(e.seq for e in effects(store.engine)) == list(range(40))

    # "first" dies (stops renewing); after the lease time "second" takes over everything.
    for seq in range(40, 60):
        deposit(config, f"acc-{seq % 9}", 1, seq)
    clock.advance(11.0)
    second.step()
    clock.advance(4.0)
    second.step()
    assert second.leases.held["ledger"] == {0, 1, 2, 3}
    second.run_until_idle()
    found = effects(store.engine)
    assert sorted(e.seq for e in found) == list(range(60))
    for versions in per_stream_versions(found).values():
        assert versions == list(range(1, len(versions) + 1))


def test_relays_serving_different_subscribers_do_not_split_each_others_share(
    store: Store,
) -> None:
    # Fair shares are per (log, subscriber): a relay that serves only "audit" is no peer of
    # one that serves only "ledger", so each must take every partition of its own subscriber.
    clock = FakeClock()
    handlers = ledger_handlers("ledger", "audit")
    ledger = Relay(
        config_for(store, handlers, partitions=4, subscribers=["ledger"]),
        node="ledger-node",
        clock=clock,
    )
    audit = Relay(
        config_for(store, handlers, partitions=4, subscribers=["audit"]),
        node="audit-node",
        clock=clock,
    )
    for _ in range(3):
        ledger.step()
        audit.step()
        clock.advance(4.0)
    assert ledger.leases.held["ledger"] == {0, 1, 2, 3}
    assert audit.leases.held["audit"] == {0, 1, 2, 3}
    for seq in range(12):
        deposit(ledger.config, f"acc-{seq % 5}", 1, seq)
    ledger.run_until_idle()
    audit.run_until_idle()
    assert sorted(e.seq for e in effects(store.engine, "ledger")) == list(range(12))
    assert sorted(e.seq for e in effects(store.engine, "audit")) == list(range(12))


def test_changing_the_partition_count_is_refused(store: Store) -> None:
    from tidings import ConfigurationError

    Relay(config_for(store, partitions=2)).prepare()
    with pytest.raises(ConfigurationError, match="set up with \\[2\\] partitions"):
        Relay(config_for(store, partitions=3)).prepare()


def test_following_a_table_that_is_not_a_log_is_refused(store: Store) -> None:
    from tidings import ConfigurationError

    with pytest.raises(ConfigurationError, match="cannot be followed"):
        config_for(store, log=outbox_tables.relay_nodes)


def test_subscriber_effects_can_record_events_delivered_in_turn(store: Store) -> None:
    handlers = ledger_handlers("ledger")

    @handlers.after_commit(Deposited, name="bonus")
    def bonus(deposited: Deposited, ctx: HandlerContext) -> None:
        uow = ctx.uow
        assert isinstance(uow, SqlUnitOfWork)
        if deposited.seq < 100:
            account = uow.get(Account, deposited.account)
            assert account is not None
            account.deposit(1, seq=deposited.seq + 100)

    config = config_for(store, handlers)
    deposit(config, "acc-1", 10, seq=1)
    deliver(config)
    ledger = effects(store.engine, "ledger")
    assert sorted(e.seq for e in ledger) == [1, 101]
    caused = next(e for e in ledger if e.seq == 101)
    assert caused.stream_version == 2


async def test_asyncio_units_of_work_write_the_outbox_and_ring_the_doorbell(store: Store) -> None:
    from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

    from tidings.persistence.sql import AsyncSqlUnitOfWork
    from tidings.persistence.sqlite import async_sqlite_engine

    async_engine: AsyncEngine
    if store.name == "sqlite":
        async_engine = async_sqlite_engine(store.url.split(":///", 1)[1])
    else:
        async_engine = create_async_engine(store.url)
    config = config_for(store)
    try:
        async with AsyncSqlUnitOfWork(
            async_engine, config.handlers, participants=[config.participant()]
        ) as uow:
            uow.add(Account(id="acc-async", balance=0, version=0)).deposit(3, seq=1)
            await uow.commit()
    finally:
        await async_engine.dispose()
    assert config.doorbell.wait(0)  # rung by the after-commit hook
    deliver(config)
    assert [e.seq for e in effects(store.engine)] == [1]


def test_only_a_commit_that_wrote_outbox_rows_rings_the_doorbell(store: Store) -> None:
    """A relay's own transactions (checkpoint moves) write no outbox row: a ring from them
    would wake it to read a page it knows is empty."""
    config = config_for(store)
    with config.unit_of_work() as uow:
        uow.commit()
    assert not config.doorbell.wait(0)
    deposit(config, "acc-1", 1, seq=1)
    assert config.doorbell.wait(0)
    deliver(config)  # moves the checkpoint in a unit of work of the same configuration
    assert [e.seq for e in effects(store.engine)] == [1]
    assert not config.doorbell.wait(0)


def test_follows_any_log_table_with_the_shared_columns(store: Store) -> None:
    """An event store's events table (no recorded_at, extra columns) is followed directly."""
    from sqlalchemy import Column, Integer, MetaData, Table

    from tidings.outbox import OutboxParticipant, event_columns
    from tidings.persistence.log import install_tx_default, log_columns

    meta = MetaData()
    events = Table(
        "test_followed_events",
        meta,
        *log_columns(),
        *event_columns(),
        Column("previous_version", Integer(), nullable=True),
    )
    install_tx_default(events)
    meta.create_all(store.engine)
    handlers = ledger_handlers("ledger")
    writer = OutboxParticipant.for_engine(store.engine, handlers, table=events)
    for seq in range(3):
        with SqlUnitOfWork(store.engine, handlers, participants=[writer]) as uow:
            found = uow.get(Account, "acc-1")
            account = found or uow.add(Account(id="acc-1", balance=0, version=0))
            account.deposit(1, seq)
            uow.commit()
    assert outbox_rows(store) == []  # no double write

    config = config_for(store, handlers, log=events)
    deliver(config)
    assert [e.seq for e in effects(store.engine)] == [0, 1, 2]
    assert status(store.engine, events)["backlog"] == 0
    assert status(store.engine)["subscribers"] == []  # the outbox's own positions: untouched
    assert purge_delivered(store.engine, events, timedelta(0)) == 0  # logs are kept


def test_rows_written_after_retention_purged_everything_are_delivered(store: Store) -> None:
    # Retention purging every delivered row (a quiet spell longer than the period) must not let
    # the next row take a position the checkpoints are already past: on SQLite a new row gets
    # the table's highest rowid plus one, 1 in an empty table, and was never delivered.
    config, relay = _delivered(store, 3)
    purged = purge_delivered(store.engine, outbox_table, timedelta(0))
    deposit(config, "acc-1", 1, seq=3)
    relay.run_until_idle()
    assert len(effects(store.engine, "ledger")) == 4
    assert purged == 2  # the newest row stays, so positions keep growing
    assert [r.stream_version for r in outbox_rows(store)] == [3, 4]


def test_rows_written_after_the_outbox_was_emptied_by_hand_are_delivered(store: Store) -> None:
    # The same after a manual DELETE of every row: the outbox table never reuses a position
    # (AUTOINCREMENT on SQLite, a sequence on PostgreSQL).
    config, relay = _delivered(store, 3)
    with store.engine.begin() as conn:
        conn.execute(delete(outbox_table))
    deposit(config, "acc-1", 1, seq=3)
    relay.run_until_idle()
    assert len(effects(store.engine, "ledger")) == 4
