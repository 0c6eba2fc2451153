"""The event-store contract: the behaviour every tidings event store must have.

A store (tidings' own SQLite and PostgreSQL stores, or a third-party one) proves itself by
subclassing :class:`EventStoreContract` in its test suite and providing an ``event_store``
fixture: a fresh, empty store with the interface of :class:`tidings.eventsourcing.EventStore`
(``append``, ``save``, ``load``, ``read_stream``, ``read_log``, ``iter_log``,
``current_version`` and writable ``snapshots`` and ``cache`` attributes), made without an
aggregate cache (``cache=None``), so that every load reads what is stored; the tests of the
cache set one::

    from tidings.testing.store_contract import EventStoreContract

    class TestMyStore(EventStoreContract):
        @pytest.fixture
        def event_store(self, tmp_path):
            store = MyStore(..., cache=None)
            store.create_tables()
            return store

        @pytest.fixture
        def store_opener(self, event_store):   # optional: enables the cross-process tests
            return MyStoreOpener(...)          # picklable; calling it opens the same store

The suite covers optimistic concurrency (threads and processes), atomic batches, gap-free
ordered reads under concurrent writers, snapshots (property-tested against full replay, and
unreadable snapshots), upcasting on read, temporal reads and hostile input. Tests never assert
on timing.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.core.aggregate import EventSourcedAggregate, applies
from tidings.core.envelope import recording_context
from tidings.core.events import event
from tidings.core.ids import uuid7
from tidings.core.messages import StoredEvent
from tidings.core.registry import default_registry
from tidings.errors import (
    CodecError,
    ConcurrencyError,
    StoreError,
    StreamNotFound,
    UnreadableEvent,
)
from tidings.eventsourcing.snapshots import SnapshotIgnored, SnapshotPolicy
from tidings.persistence.log import START, Checkpoint

# -- the contract's own little domain ------------------------------------------------------------


@event(name="tidings.contract.Opened")
class Opened:
    owner: str


@event(name="tidings.contract.Deposited")
class Deposited:
    amount: int


@event(name="tidings.contract.Noted", version=2)
class Noted:
    text: str
    by: str


@event(name="tidings.contract.AccountState")
class AccountState:
    owner: str
    balance: int
    deposits: int


def _noted_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("explode"):
        raise ValueError("this v1 note cannot be upgraded")
    return {"text": data["text"], "by": "unknown"}


if default_registry.upcaster_for("tidings.contract.Noted", 1) is None:
    default_registry.add_upcaster("tidings.contract.Noted", 1, _noted_v1_to_v2)


class ContractAccount(EventSourcedAggregate):
    """An account whose snapshots can be made unreadable on purpose."""

    stream_category = "ContractAccount"
    snapshots_broken = False

    owner: str
    balance: int
    deposits: int
    notes: list[str]

    @classmethod
    def open(cls, id: str, owner: str) -> ContractAccount:
        account = cls.blank(id)
        account.record(Opened(owner))
        return account

    def deposit(self, amount: int) -> None:
        self.record(Deposited(amount))

    @applies(Opened)
    def _opened(self, opened: Opened) -> None:
        self.owner, self.balance, self.deposits, self.notes = opened.owner, 0, 0, []

    @applies(Deposited)
    def _deposited(self, deposited: Deposited) -> None:
        self.balance += deposited.amount
        self.deposits += 1

    @applies(Noted)
    def _noted(self, noted: Noted) -> None:
        self.notes.append(f"{noted.text} ({noted.by})")

    def to_snapshot(self) -> AccountState:
        return AccountState(self.owner, self.balance, self.deposits)

    @classmethod
    def from_snapshot(cls, id: Any, version: int, state: AccountState) -> ContractAccount:
        if cls.snapshots_broken:
            raise RuntimeError("snapshot restore deliberately broken")
        account = cls.blank(id)
        account.owner, account.balance, account.deposits = state.owner, state.balance, 0
        account.deposits = state.deposits
        account.notes = []
        return account

    def state(self) -> tuple[Any, ...]:
        return (self.id, self.version, self.owner, self.balance, self.deposits)  # type: ignore[attr-defined]


def fresh_id() -> str:
    return uuid.uuid4().hex[:12]


def raw_event(
    event_type: str, event_version: int, payload: bytes, *, occurred_at: datetime | None = None
) -> StoredEvent:
    """An already-encoded event, as another (older, or broken) writer would have stored it."""
    event_id = uuid7()
    return StoredEvent(
        event_id=event_id,
        event_type=event_type,
        event_version=event_version,
        stream_id=None,
        stream_version=None,
        occurred_at=occurred_at or datetime.now(UTC),
        correlation_id=event_id,
        causation_id=None,
        producer="contract",
        payload=payload,
    )


def _append_with_retries(store: Any, stream_id: str, count: int) -> tuple[int, int]:
    """Append ``count`` events one at a time, retrying on conflict; (appended, conflicts)."""
    done = conflicts = 0
    while done < count:
        version = store.current_version(stream_id)
        try:
            store.append(stream_id, [Deposited(1)], expected_version=version)
            done += 1
        except ConcurrencyError as exc:
            _check_conflict(exc, stream_id, version)
            conflicts += 1
    return done, conflicts


#: How long a test waits for committed events to become visible to log readers. On PostgreSQL
#: the gap-safe fence hides rows until every older transaction *in the cluster* has finished,
#: so on a busy shared server visibility can lag; it is a bound on waiting, never asserted on.
VISIBILITY_WAIT = 60.0


def _past(started: list[float]) -> bool:
    return bool(started) and time.monotonic() - started[0] > VISIBILITY_WAIT


def wait_for_log(store: Any, count: int, **filters: Any) -> list[Any]:
    """The log entries matching ``filters`` once at least ``count`` are visible (or the wait
    bound passed: the caller's assertions then report what is missing)."""
    started = [time.monotonic()]
    while True:
        entries = list(store.iter_log(**filters))
        if len(entries) >= count or _past(started):
            return entries
        time.sleep(0.01)


def _check_conflict(exc: ConcurrencyError, stream_id: str, expected: int) -> None:
    actual_ok = exc.actual_version is None or exc.actual_version > expected
    if exc.stream_id != stream_id or exc.expected_version != expected or not actual_ok:
        raise AssertionError(f"conflict misreported for {stream_id}@{expected}: {exc}") from exc


def _process_worker(opener: Callable[[], Any], stream_id: str, count: int, results: Any) -> None:
    store = opener()
    results.put(_append_with_retries(store, stream_id, count))


class EventStoreContract:
    """Subclass with an ``event_store`` fixture (and optionally ``store_opener``)."""

    @pytest.fixture
    def store_opener(self) -> Callable[[], Any]:
        pytest.skip("the store under test provides no store_opener: cross-process tests skipped")

    # -- append and read ----------------------------------------------------------------------

    def test_append_then_read_forward_and_backward(self, event_store: Any) -> None:
        stream = f"acct-{fresh_id()}"
        assert event_store.append(stream, [Opened("ann"), Deposited(1)], expected_version=0) == 2
        assert event_store.append(stream, [Deposited(2), Deposited(3)], expected_version=2) == 4
        forward = event_store.read_stream(stream)
        assert [e.event.stream_version for e in forward] == [1, 2, 3, 4]
        assert [e.event.event_type for e in forward][:2] == [
            "tidings.contract.Opened",
            "tidings.contract.Deposited",
        ]
        assert [
            e.event.stream_version for e in event_store.read_stream(stream, from_version=3)
        ] == [
            3,
            4,
        ]
        backward = event_store.read_stream(stream, backward=True, limit=3)
        assert [e.event.stream_version for e in backward] == [4, 3, 2]
        assert [
            e.event.stream_version
            for e in event_store.read_stream(stream, from_version=2, backward=True)
        ] == [2, 1]
        assert event_store.read_stream(stream, from_version=99) == []
        assert [e.decode(event_store.codec).event for e in forward][3] == Deposited(3)
        assert event_store.current_version(stream) == 4

    def test_metadata_round_trips(self, event_store: Any) -> None:
        stream = f"acct-{fresh_id()}"
        correlation = uuid7()
        moment = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
        with recording_context(
            correlation_id=correlation, producer="billing", clock=lambda: moment
        ):
            event_store.append(stream, [Opened("ann")], expected_version=0)
        (entry,) = event_store.read_stream(stream)
        stored = entry.event
        assert stored.correlation_id == correlation
        assert stored.producer == "billing"
        assert stored.occurred_at == moment
        assert stored.payload == b'{"owner":"ann"}'

    def test_unknown_stream_is_a_clear_error(self, event_store: Any) -> None:
        missing = f"acct-{fresh_id()}"
        with pytest.raises(StreamNotFound, match=missing):
            event_store.read_stream(missing)
        with pytest.raises(StreamNotFound, match=f"ContractAccount-{missing}"):
            event_store.load(ContractAccount, missing)
        assert event_store.current_version(missing) == 0

    # -- optimistic concurrency ---------------------------------------------------------------

    def test_conflict_names_stream_expected_and_actual_and_writes_nothing(
        self, event_store: Any
    ) -> None:
        stream = f"acct-{fresh_id()}"
        event_store.append(stream, [Opened("ann"), Deposited(1)], expected_version=0)
        for expected in (0, 1, 3):
            with pytest.raises(ConcurrencyError) as caught:
                event_store.append(stream, [Deposited(5), Deposited(6)], expected_version=expected)
            assert caught.value.stream_id == stream
            assert caught.value.expected_version == expected
            assert caught.value.actual_version == 2
            assert stream in str(caught.value)
            assert f"expected version {expected}" in str(caught.value)
        assert [e.event.stream_version for e in event_store.read_stream(stream)] == [1, 2]

    def test_stale_aggregate_save_conflicts(self, event_store: Any) -> None:
        account_id = fresh_id()
        event_store.save(ContractAccount.open(account_id, "ann"))
        first = event_store.load(ContractAccount, account_id)
        second = event_store.load(ContractAccount, account_id)
        first.deposit(10)
        event_store.save(first)
        second.deposit(20)
        with pytest.raises(ConcurrencyError) as caught:
            event_store.save(second)
        assert caught.value.expected_version == 1
        assert caught.value.actual_version == 2
        assert second.pending_events, "a failed save keeps the pending events"
        assert event_store.load(ContractAccount, account_id).balance == 10

    def test_creating_an_existing_stream_conflicts(self, event_store: Any) -> None:
        account_id = fresh_id()
        event_store.save(ContractAccount.open(account_id, "ann"))
        with pytest.raises(ConcurrencyError):
            event_store.save(ContractAccount.open(account_id, "mallory"))
        assert event_store.load(ContractAccount, account_id).owner == "ann"

    def test_conflicts_under_concurrent_threads(self, event_store: Any) -> None:
        stream = f"acct-{fresh_id()}"
        results: list[tuple[int, int]] = []
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                results.append(_append_with_retries(event_store, stream, 8))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        versions = [e.event.stream_version for e in event_store.read_stream(stream)]
        assert versions == list(range(1, 33)), "every append landed once, with no holes"

    def test_conflicts_under_concurrent_processes(
        self, event_store: Any, store_opener: Callable[[], Any]
    ) -> None:
        stream = f"acct-{fresh_id()}"
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        workers = [
            context.Process(target=_process_worker, args=(store_opener, stream, 6, results))
            for _ in range(3)
        ]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        assert sum(done for done, _ in outcomes) == 18
        versions = [e.event.stream_version for e in event_store.read_stream(stream)]
        assert versions == list(range(1, 19))

    # -- atomicity ----------------------------------------------------------------------------

    def test_a_batch_is_atomic(self, event_store: Any) -> None:
        stream = f"acct-{fresh_id()}"
        event_store.append(stream, [Opened("ann")], expected_version=0)
        with pytest.raises(CodecError):
            event_store.append(stream, [Deposited(1), Opened(object())], expected_version=1)  # type: ignore[arg-type]
        duplicate = raw_event("tidings.contract.Deposited", 1, b'{"amount":1}')
        with pytest.raises(StoreError, match="event_id"):
            event_store.append(stream, [duplicate, duplicate], expected_version=1)
        assert event_store.current_version(stream) == 1

    def test_saving_several_aggregates_is_atomic(self, event_store: Any) -> None:
        taken_id, new_id = fresh_id(), fresh_id()
        event_store.save(ContractAccount.open(taken_id, "ann"))
        fresh = ContractAccount.open(new_id, "bob")
        clash = ContractAccount.open(taken_id, "mallory")
        with pytest.raises(ConcurrencyError):
            event_store.save(fresh, clash)
        with pytest.raises(StreamNotFound):
            event_store.load(ContractAccount, new_id)

    # -- the global log -----------------------------------------------------------------------

    def test_log_pages_filters_and_checkpoints(self, event_store: Any) -> None:
        prefix = f"log{fresh_id()}"
        odd = f"{prefix}_%-x"
        event_store.append(f"{prefix}-a", [Opened("a"), Deposited(1)], expected_version=0)
        event_store.append(odd, [Opened("odd")], expected_version=0)
        event_store.append(f"{prefix}-b", [Opened("b"), Deposited(2)], expected_version=0)
        wait_for_log(event_store, 5, stream_prefix=prefix)
        mine = [
            e for e in event_store.iter_log(page_size=2) if e.event.stream_id.startswith(prefix)
        ]
        assert [e.event.stream_id for e in mine] == [f"{prefix}-a"] * 2 + [odd] + [
            f"{prefix}-b"
        ] * 2
        assert [e.checkpoint for e in mine] == sorted(e.checkpoint for e in mine)
        opened = list(event_store.iter_log(types=[Opened], stream_prefix=prefix, page_size=1))
        assert [e.event.stream_id for e in opened] == [f"{prefix}-a", odd, f"{prefix}-b"]
        by_name = list(
            event_store.iter_log(types=["tidings.contract.Deposited"], stream_prefix=prefix)
        )
        assert [e.event.stream_version for e in by_name] == [2, 2]
        # '%' and '_' in a prefix are literal characters, not patterns.
        assert [e.event.stream_id for e in event_store.iter_log(stream_prefix=f"{prefix}_%")] == [
            odd
        ]
        page = event_store.read_log(mine[2].checkpoint, limit=1, stream_prefix=prefix)
        assert [e.event.stream_id for e in page.entries] == [f"{prefix}-b"]
        assert page.next == page.entries[0].checkpoint
        end = event_store.read_log(mine[-1].checkpoint, stream_prefix=prefix)
        assert end.entries == [] and end.next == mine[-1].checkpoint

    def test_gap_free_ordered_reads_under_concurrent_writers(self, event_store: Any) -> None:
        prefix = f"gap{fresh_id()}"
        writers, per_writer = 4, 15
        done = threading.Event()
        finished_at: list[float] = []
        seen: list[Any] = []
        errors: list[BaseException] = []

        def write(n: int) -> None:
            try:
                for i in range(per_writer):
                    event_store.append(f"{prefix}-{n}", [Deposited(i)], expected_version=i)
            except BaseException as exc:
                errors.append(exc)

        def follow() -> None:
            checkpoint = START
            try:
                while True:
                    finished = done.is_set()
                    page = event_store.read_log(checkpoint, limit=7, stream_prefix=prefix)
                    seen.extend(page.entries)
                    checkpoint = page.next
                    if finished and (len(seen) >= writers * per_writer or _past(finished_at)):
                        return
            except BaseException as exc:
                errors.append(exc)

        follower = threading.Thread(target=follow)
        follower.start()
        threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        finished_at.append(time.monotonic())
        done.set()
        follower.join()
        assert not errors, errors
        everything = list(event_store.iter_log(stream_prefix=prefix))
        assert len(everything) == writers * per_writer
        assert [e.event.event_id for e in seen] == [e.event.event_id for e in everything]
        for n in range(writers):
            versions = [
                e.event.stream_version for e in seen if e.event.stream_id == f"{prefix}-{n}"
            ]
            assert versions == list(range(1, per_writer + 1)), "per-stream order is kept"

    # -- snapshots ----------------------------------------------------------------------------

    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        batches=st.lists(st.lists(st.integers(-1000, 1000), max_size=6), max_size=6),
        every=st.integers(1, 5),
    )
    def test_snapshot_plus_tail_equals_full_replay(
        self, event_store: Any, batches: list[list[int]], every: int
    ) -> None:
        event_store.snapshots = SnapshotPolicy(every=every)
        account_id = fresh_id()
        account = ContractAccount.open(account_id, "ann")
        event_store.save(account)
        for amounts in batches:
            for amount in amounts:
                account.deposit(amount)
            if amounts:
                event_store.save(account)
        with_snapshots = event_store.load(ContractAccount, account_id)
        full = event_store.load(ContractAccount, account_id, use_snapshots=False)
        assert with_snapshots.state() == full.state() == account.state()
        for version in range(1, account.version + 1):
            assert (
                event_store.load(ContractAccount, account_id, at_version=version).state()
                == event_store.load(
                    ContractAccount, account_id, at_version=version, use_snapshots=False
                ).state()
            )

    def test_snapshot_by_callable_policy(self, event_store: Any) -> None:
        event_store.snapshots = SnapshotPolicy(when=lambda aggregate, new: new >= 3)
        account_id = fresh_id()
        account = ContractAccount.open(account_id, "ann")
        account.deposit(1)
        event_store.save(account)
        for amount in (2, 3, 4):
            account.deposit(amount)
        event_store.save(account)
        assert event_store.load(ContractAccount, account_id).state() == account.state()

    def test_unreadable_snapshot_is_ignored_with_a_warning(
        self, event_store: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        event_store.snapshots = SnapshotPolicy(every=2)
        account_id = fresh_id()
        account = ContractAccount.open(account_id, "ann")
        for amount in (5, 6, 7):
            account.deposit(amount)
        event_store.save(account)
        monkeypatch.setattr(ContractAccount, "snapshots_broken", True)
        with pytest.warns(SnapshotIgnored, match=f"ContractAccount-{account_id}"):
            loaded = event_store.load(ContractAccount, account_id)
        assert loaded.state() == account.state()

    # -- upcasting and hostile rows -------------------------------------------------------------

    def test_old_versions_are_upcast_on_read_and_never_rewritten(self, event_store: Any) -> None:
        account_id = fresh_id()
        stream = f"ContractAccount-{account_id}"
        event_store.append(stream, [Opened("ann")], expected_version=0)
        v1 = raw_event("tidings.contract.Noted", 1, b'{"text":"hello"}')
        event_store.append(stream, [v1], expected_version=1)
        account = event_store.load(ContractAccount, account_id)
        assert account.notes == ["hello (unknown)"]
        (stored,) = event_store.read_stream(stream, from_version=2)
        assert stored.event.event_version == 1
        assert stored.event.payload == b'{"text":"hello"}'
        assert stored.decode(event_store.codec).event == Noted("hello", "unknown")

    @pytest.mark.parametrize(
        ("event_type", "version", "payload", "complaint"),
        [
            ("tidings.contract.Deposited", 1, b"\xff not json", "not valid JSON"),
            ("tidings.contract.Deposited", 1, b'{"amount":"many"}', "does not match"),
            ("tidings.contract.NoSuchType", 1, b"{}", "unknown event type"),
            ("tidings.contract.Noted", 1, b'{"text":"x","explode":true}', "upcaster"),
            ("tidings.contract.Noted", 7, b'{"text":"x"}', "newer code"),
        ],
    )
    def test_unreadable_rows_name_stream_version_and_type(
        self, event_store: Any, event_type: str, version: int, payload: bytes, complaint: str
    ) -> None:
        account_id = fresh_id()
        stream = f"ContractAccount-{account_id}"
        event_store.append(stream, [Opened("ann"), Deposited(1)], expected_version=0)
        event_store.append(stream, [raw_event(event_type, version, payload)], expected_version=2)
        with pytest.raises(UnreadableEvent) as caught:
            event_store.load(ContractAccount, account_id)
        message = str(caught.value)
        assert stream in message and "version 3" in message and event_type in message
        assert complaint in message
        assert caught.value.stream_version == 3
        (entry,) = event_store.read_stream(stream, from_version=3)
        assert entry.event.payload == payload, "the stored row is left untouched"
        with pytest.raises(UnreadableEvent):
            entry.decode(event_store.codec)
        # Earlier states stay readable.
        assert event_store.load(ContractAccount, account_id, at_version=2).balance == 1

    @pytest.mark.parametrize(
        ("kwargs", "complaint"),
        [
            ({"expected_version": -1}, "expected_version"),
            ({"expected_version": "0"}, "expected_version"),
            ({"expected_version": True}, "expected_version"),
        ],
    )
    def test_bad_append_arguments(
        self, event_store: Any, kwargs: dict[str, Any], complaint: str
    ) -> None:
        with pytest.raises(ValueError, match=complaint):
            event_store.append(f"acct-{fresh_id()}", [Opened("x")], **kwargs)

    def test_bad_read_arguments(self, event_store: Any) -> None:
        stream = f"acct-{fresh_id()}"
        with pytest.raises(ValueError, match="empty"):
            event_store.append(stream, [], expected_version=0)
        with pytest.raises(ValueError, match="stream id"):
            event_store.append("", [Opened("x")], expected_version=0)
        with pytest.raises(ValueError, match="limit"):
            event_store.read_log(START, limit=0)
        with pytest.raises(ValueError, match="Checkpoint"):
            event_store.read_log("0.0")
        with pytest.raises(ValueError, match="event type filter"):
            event_store.read_log(START, types=[42])
        with pytest.raises(ValueError, match="not a log checkpoint"):
            Checkpoint.parse("yesterday")

    # -- temporal queries -----------------------------------------------------------------------

    def test_state_as_of_a_version_or_a_moment(self, event_store: Any) -> None:
        account_id = fresh_id()
        day = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
        with recording_context(clock=lambda: day):
            account = ContractAccount.open(account_id, "ann")
            account.deposit(10)
            event_store.save(account)
        for offset, amount in ((1, 20), (2, 30)):
            later = day + timedelta(days=offset)
            with recording_context(clock=lambda later=later: later):  # type: ignore[misc]
                account.deposit(amount)
                event_store.save(account)
        assert event_store.load(ContractAccount, account_id, at_version=2).balance == 10
        assert event_store.load(ContractAccount, account_id, at_version=3).balance == 30
        noon_day_two = day + timedelta(days=1, hours=3)
        assert event_store.load(ContractAccount, account_id, as_of=noon_day_two).balance == 30
        as_of_start = event_store.load(ContractAccount, account_id, as_of=day)
        assert (as_of_start.version, as_of_start.balance) == (2, 10)
        assert (
            event_store.load(ContractAccount, account_id, as_of=day + timedelta(days=9)).balance
            == 60
        )
        with pytest.raises(StreamNotFound, match="no events yet"):
            event_store.load(ContractAccount, account_id, as_of=day - timedelta(seconds=1))
        with pytest.raises(StreamNotFound, match="no version 9"):
            event_store.load(ContractAccount, account_id, at_version=9)
        with pytest.raises(ValueError, match="timezone-aware"):
            event_store.load(ContractAccount, account_id, as_of=datetime(2026, 1, 11))
        with pytest.raises(ValueError, match="at_version"):
            event_store.load(ContractAccount, account_id, at_version=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            event_store.load(ContractAccount, account_id)


__all__ = [
    "AccountState",
    "ContractAccount",
    "Deposited",
    "EventStoreContract",
    "Noted",
    "Opened",
    "fresh_id",
    "raw_event",
    "wait_for_log",
]
