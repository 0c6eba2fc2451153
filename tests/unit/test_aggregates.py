"""Envelopes, time-ordered ids, and the two kinds of aggregate."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tidings import (
    Aggregate,
    ConfigurationError,
    EventSourcedAggregate,
    InMemoryUnitOfWork,
    applies,
    event,
    recording_context,
    uuid7,
)
from tidings.core.ids import uuid7_time_ms


@event(name="aggregates-test.Opened")
class Opened:
    owner: str


@event(name="aggregates-test.Deposited")
class Deposited:
    amount: int


@event(name="aggregates-test.BonusDeposited")
class BonusDeposited(Deposited):
    reason: str


@event(name="aggregates-test.Noted")
class Noted:
    text: str


class Ledger(Aggregate):
    def __init__(self, id: str) -> None:
        self.id = id
        self.balance = 0

    def deposit(self, amount: int) -> None:
        self.balance += amount
        self.record(Deposited(amount))


class Account(EventSourcedAggregate):
    stream_category = "account"

    def __init__(self, id: str, owner: str) -> None:
        self.id = id
        self.owner = ""
        self.balance = 0
        self.applied: list[object] = []
        self.record(Opened(owner))

    def deposit(self, amount: int) -> None:
        self.record(Deposited(amount))

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.owner = event.owner
        self.balance = 0
        self.applied = [event]

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        # Also serves BonusDeposited, which has no apply method of its own.
        self.balance += event.amount
        self.applied.append(event)


# -- ids -------------------------------------------------------------------------------------


def test_uuid7_is_version_7_rfc_variant_and_carries_the_time() -> None:
    before = int(datetime.now(UTC).timestamp() * 1000)
    value = uuid7()
    after = int(datetime.now(UTC).timestamp() * 1000)
    assert value.version == 7
    assert value.variant == "specified in RFC 4122"
    assert before <= uuid7_time_ms(value) <= after + 1


def test_uuid7_is_strictly_increasing_even_within_one_millisecond() -> None:
    # 20k ids are made far faster than 20k milliseconds: many share a millisecond, and the
    # 12-bit counter overflows at least once (4096 ids in one ms) on a fast machine.
    ids = [uuid7() for _ in range(20_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert len(set(ids)) == len(ids)


# -- envelopes -------------------------------------------------------------------------------


def test_record_builds_a_complete_envelope() -> None:
    ledger = Ledger("L1")
    with recording_context(producer="billing"):
        ledger.deposit(5)
    (envelope,) = ledger.pending_events
    assert envelope.event == Deposited(5)
    assert envelope.event_type == "aggregates-test.Deposited"
    assert envelope.event_version == 1
    assert envelope.stream_id == "Ledger-L1"
    assert envelope.stream_version == 1
    assert envelope.producer == "billing"
    assert envelope.event_id.version == 7
    # Recorded outside any handler: it starts its own correlation and has no cause.
    assert envelope.correlation_id == envelope.event_id
    assert envelope.causation_id is None
    assert envelope.occurred_at.tzinfo is not None
    assert envelope.occurred_at.utcoffset() == timedelta(0)
    assert "Ledger-L1@1" in envelope.describe()


def test_occurred_at_comes_from_the_context_clock() -> None:
    fixed = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    ledger = Ledger("L1")
    with recording_context(clock=lambda: fixed):
        ledger.deposit(1)
    assert ledger.pending_events[0].occurred_at == fixed


def test_envelope_is_immutable() -> None:
    ledger = Ledger("L1")
    ledger.deposit(1)
    envelope = ledger.pending_events[0]
    with pytest.raises(AttributeError):
        envelope.stream_version = 7  # type: ignore[misc]


def test_stream_versions_count_up_and_ids_follow_recording_order() -> None:
    ledger = Ledger("L1")
    for amount in range(5):
        ledger.deposit(amount)
    envelopes = ledger.pending_events
    assert [e.stream_version for e in envelopes] == [1, 2, 3, 4, 5]
    assert [e.event_id for e in envelopes] == sorted(e.event_id for e in envelopes)
    assert ledger.version == 5


def test_recording_context_nests_and_restores() -> None:
    correlation = uuid7()
    ledger = Ledger("L1")
    with recording_context(correlation_id=correlation, producer="outer"):
        with recording_context(producer="inner"):
            ledger.deposit(1)
        ledger.deposit(2)
    ledger.deposit(3)
    first, second, third = ledger.pending_events
    assert (first.correlation_id, first.producer) == (correlation, "inner")
    assert (second.correlation_id, second.producer) == (correlation, "outer")
    assert third.correlation_id == third.event_id
    assert third.producer is None


def test_system_clock_is_timezone_aware_utc() -> None:
    from tidings import system_clock

    now = system_clock()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)
    assert now.tzinfo is UTC


# -- aggregates ------------------------------------------------------------------------------


def test_aggregate_without_id_gets_a_clear_error() -> None:
    class Anonymous(Aggregate):
        pass

    with pytest.raises(ConfigurationError, match="has no `id`"):
        Anonymous().record(Noted("x"))


def test_pending_events_are_kept_until_a_unit_of_work_commits() -> None:
    ledger = Ledger("L1")
    ledger.deposit(1)
    ledger.deposit(2)
    uow = InMemoryUnitOfWork()
    with uow:
        uow.add(ledger)
        assert len(ledger.pending_events) == 2  # adding does not clear
    assert len(ledger.pending_events) == 2  # leaving without commit does not clear
    with uow:
        uow.add(ledger)
        uow.commit()
    assert ledger.pending_events == []


def test_pending_events_is_a_copy_callers_cannot_corrupt() -> None:
    ledger = Ledger("L1")
    ledger.deposit(1)
    ledger.pending_events.clear()
    assert len(ledger.pending_events) == 1


# -- event sourcing --------------------------------------------------------------------------


def test_record_applies_the_event_through_its_apply_method() -> None:
    account = Account("A1", "ada")
    account.deposit(10)
    account.record(BonusDeposited(amount=5, reason="welcome"))
    assert account.owner == "ada"
    assert account.balance == 15
    assert account.version == 3
    assert account.stream_id == "account-A1"
    assert [e.stream_version for e in account.pending_events] == [1, 2, 3]


def test_replay_runs_the_same_apply_methods_and_records_nothing() -> None:
    account = Account("A1", "ada")
    account.deposit(10)
    account.deposit(7)
    account.record(Noted("no apply method: allowed, state untouched"))
    history: list[Any] = [e.event for e in account.pending_events]

    rebuilt = Account.replay("A1", history)
    assert rebuilt.pending_events == []
    assert (rebuilt.owner, rebuilt.balance, rebuilt.version) == ("ada", 17, 4)
    assert rebuilt.applied == account.applied


def test_replay_on_top_of_a_snapshot_continues_the_version() -> None:
    account = Account("A1", "ada")
    account.deposit(10)
    snapshot = Account.replay("A1", [e.event for e in account.pending_events])
    rebuilt = Account.replay("A1", [Deposited(1), Deposited(2)], start=snapshot)
    assert (rebuilt.balance, rebuilt.version) == (13, 4)


def test_apply_is_unconditional_and_failures_record_nothing() -> None:
    class Strict(EventSourcedAggregate):
        def __init__(self) -> None:
            self.id = "s"

        @applies(Deposited)
        def _deposited(self, event: Deposited) -> None:
            raise RuntimeError("apply methods must not fail; this one does")

    strict = Strict()
    with pytest.raises(RuntimeError):
        strict.record(Deposited(1))
    # A failing apply leaves no half-recorded event behind.
    assert strict.pending_events == []
    assert strict.version == 0


def test_subclass_apply_method_overrides_the_parent_one() -> None:
    class Doubling(Account):
        @applies(Deposited)
        def _double(self, event: Deposited) -> None:
            self.balance += 2 * event.amount

    doubling = Doubling("D", "bob")
    doubling.deposit(5)
    assert doubling.balance == 10
