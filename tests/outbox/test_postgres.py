"""PostgreSQL-only guarantees: gap safety under concurrent writers, NOTIFY wake-up, lost races."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import MetaData, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable

from tidings import CommitBatch, HandlerContext, Handlers, TidingsError, Timing, uuid7
from tidings.core.envelope import system_clock
from tidings.eventsourcing import EventStoreSchema
from tidings.eventsourcing.plans import log_page_statement
from tidings.outbox import Relay, RelayConfig, outbox_table, status
from tidings.outbox.delivery import Follower
from tidings.outbox.participant import PostCommitNotifier
from tidings.persistence.sql import Params
from tidings.testing.services import POSTGRES_URL

from .app import Deposited, deposit, effects, ledger_handlers, record_effect
from .conftest import Store


class SlowCommit:
    """Sleeps a random while *after* the outbox insert and before the commit.

    So sequence values (positions) are taken in one order and transactions commit in another:
    exactly the situation in which a naive ``position > checkpoint`` follower skips events.
    """

    def __init__(self, seed: int, max_delay: float) -> None:
        self.rng = random.Random(seed)
        self.max_delay = max_delay

    def statements(self, batch: CommitBatch) -> Iterable[tuple[Executable, Params]]:
        delay = self.rng.uniform(0.0, self.max_delay)
        return [(text("SELECT pg_sleep(:delay)"), {"delay": delay})]

    def translate(self, error: DBAPIError) -> TidingsError | None:
        return None


def _wait_for(condition: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds}s")
        time.sleep(0.02)


def test_gap_safety_with_8_concurrent_writers_committing_out_of_order(pg_store: Store) -> None:
    engine = pg_store.engine
    follower = RelayConfig(engine, ledger_handlers("ledger"), partitions=2, poll_interval=0.01)
    relay = Relay(follower)
    relay.prepare()
    relay.start()
    writers, per_writer = 8, 30
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        config = RelayConfig(
            engine,
            ledger_handlers("ledger"),
            partitions=2,
            extra_participants=[SlowCommit(seed=writer, max_delay=0.03)],
        )
        try:
            for n in range(per_writer):
                deposit(config, f"w{writer}-acc{n % 3}", 1, seq=writer * 1000 + n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        _wait_for(lambda: len(effects(engine)) >= writers * per_writer)
    finally:
        relay.stop()

    with engine.connect() as conn:
        written = set(conn.execute(select(outbox_table.c.event_id)).scalars())
    handled = [e.event_id for e in effects(engine)]
    assert len(written) == writers * per_writer
    assert len(handled) == len(set(handled))  # nothing twice
    assert {str(w) for w in written} == set(handled)  # nothing skipped
    streams: dict[str, list[int]] = {}
    for effect in effects(engine):
        streams.setdefault(effect.stream_id, []).append(effect.stream_version)
    for versions in streams.values():
        assert versions == list(range(1, len(versions) + 1))


def test_notify_wakes_a_relay_in_another_unit_of_work_setup(pg_store: Store) -> None:
    engine = pg_store.engine
    # Separate configs: no shared in-process doorbell, and polling too slow to matter.
    relay_config = RelayConfig(
        engine, ledger_handlers("ledger"), poll_interval=600.0, min_poll_interval=600.0
    )
    writer_config = RelayConfig(engine, ledger_handlers("ledger"))
    relay = Relay(relay_config)
    relay.prepare()
    relay.start()
    try:
        time.sleep(0.5)  # let the relay go idle on its (10-minute) wait
        deposit(writer_config, "acc-1", 1, seq=1)
        _wait_for(lambda: len(effects(engine)) == 1)
    finally:
        relay.stop()


def test_a_relay_that_lost_the_race_rolls_back_its_effects(pg_store: Store) -> None:
    engine = pg_store.engine
    entered, proceed = threading.Event(), threading.Event()
    slow_thread: list[threading.Thread] = []
    book = record_effect("ledger")

    def handler(deposited: Deposited, ctx: HandlerContext) -> None:
        book(deposited, ctx)
        if slow_thread and threading.current_thread() is slow_thread[0]:
            entered.set()
            proceed.wait(30)

    handlers = Handlers()
    handlers.add(Deposited, handler, when=Timing.AFTER_COMMIT, name="ledger")
    config = RelayConfig(engine, handlers, partitions=1)
    for seq in range(5):
        deposit(config, "acc-1", 1, seq)
    slow, fast = Relay(config, node="slow"), Relay(config, node="fast")
    slow.prepare()
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(slow.step()))
    slow_thread.append(thread)
    thread.start()
    assert entered.wait(30)
    # "fast" believes it owns the partition too (say the slow one's lease expired meanwhile).
    assert fast.follower.process(fast.subscribers[0], 0) == 5
    proceed.set()
    thread.join(30)
    assert outcome == [0]  # its checkpoint compare-and-set failed: nothing committed
    assert slow.leases.held["ledger"] == set()
    assert sorted(e.seq for e in effects(engine)) == [0, 1, 2, 3, 4]


def test_two_relay_threads_deliver_everything_once_in_order(pg_store: Store) -> None:
    engine = pg_store.engine
    relays = [
        Relay(
            RelayConfig(engine, ledger_handlers("ledger"), partitions=4, lease_seconds=1.0),
            node=f"node-{n}",
        )
        for n in range(2)
    ]
    for relay in relays:
        relay.prepare()
        relay.start()
    writer = RelayConfig(engine, ledger_handlers("ledger"), partitions=4)
    try:
        for seq in range(200):
            deposit(writer, f"acc-{seq % 8}", 1, seq)
        _wait_for(lambda: len(effects(engine)) >= 200)
        # Both took part: the fair share gave each of them partitions.
        _wait_for(lambda: all(r.leases.held.get("ledger") for r in relays))
        _wait_for(lambda: _shown_owners(engine) == (2, [0, 1, 2, 3]))
    finally:
        for relay in relays:
            relay.stop()
    found = effects(engine)
    assert sorted(e.seq for e in found) == list(range(200))
    streams: dict[str, list[int]] = {}
    for effect in found:
        streams.setdefault(effect.stream_id, []).append(effect.stream_version)
    for versions in streams.values():
        assert versions == list(range(1, len(versions) + 1))


def _shown_owners(engine: Any) -> tuple[int, list[int]]:
    """How many relays `tidings status` shows for the ledger, and the partitions they hold."""
    relays = status(engine)["subscribers"][0]["relays"]
    return len(relays), sorted(p for parts in relays.values() for p in parts)


def test_a_row_committed_late_by_an_older_transaction_is_not_skipped(pg_store: Store) -> None:
    """The case a ``position > checkpoint`` follower gets wrong, made deterministic."""
    from sqlalchemy import insert

    from tidings.core.envelope import Envelope
    from tidings.core.messages import to_stored
    from tidings.outbox import tables as outbox_tables

    engine = pg_store.engine
    config = RelayConfig(engine, ledger_handlers("ledger"), partitions=1)
    relay = Relay(config)
    relay.prepare()
    late = Envelope(
        event=Deposited(account="late", amount=1, seq=1),
        event_id=uuid7(),
        event_type="tests.outbox.Deposited",
        event_version=1,
        occurred_at=system_clock(),
        stream_id="Account-late",
        stream_version=1,
        correlation_id=uuid7(),
        causation_id=None,
        producer=None,
    )
    row = {**outbox_tables.row_from_stored(to_stored(late)), "recorded_at": system_clock()}
    with engine.connect() as older:
        older.begin()
        older.execute(insert(outbox_table).values(row))  # takes its xid and a position first
        deposit(config, "early", 1, seq=2)  # a younger transaction commits first
        assert relay.step() == 0  # the committed row waits behind the open older one
        assert effects(engine) == []
        older.commit()
    relay.run_until_idle()
    assert [e.seq for e in effects(engine)] == [1, 2]  # both, in commit-safe log order


def test_post_commit_notifier_announces_every_channel_asked_for(pg_store: Store) -> None:
    import psycopg

    listener = psycopg.connect(POSTGRES_URL.replace("postgresql+psycopg", "postgresql"))
    listener.autocommit = True
    try:
        listener.execute('LISTEN "tidings_test_one"')
        listener.execute('LISTEN "tidings_test_two"')
        notifier = PostCommitNotifier(pg_store.engine)
        # Asked for together or one after the other: each channel is announced (several in
        # one statement when they were waiting together).
        notifier.notify("tidings_test_one")
        notifier.notify("tidings_test_two")
        heard: set[str] = set()
        deadline = time.monotonic() + 30
        while heard != {"tidings_test_one", "tidings_test_two"}:
            assert time.monotonic() < deadline, f"heard only {heard}"
            for note in listener.notifies(timeout=0.5, stop_after=1):
                heard.add(note.channel)
    finally:
        listener.close()


def _fill(
    engine: Any, table: str, transactions: int, rows: int, outbox: bool = False
) -> tuple[int, int]:
    """``transactions`` transactions of ``rows`` rows each appended to a log table (``outbox``:
    with the outbox's own columns too); returns the (tx, position) of the last row of the first
    two thirds."""
    columns = (
        "event_id, event_type, event_version, stream_id, stream_version, occurred_at,"
        " correlation_id, payload"
    )
    values = ""
    if outbox:
        columns += ", headers, recorded_at"
        values = ", '{}', now()"
    for t in range(transactions):
        with engine.begin() as connection:
            connection.execute(
                text(
                    f"INSERT INTO {table} ({columns}) SELECT gen_random_uuid(), 'ledger.Deposited',"
                    f" 1, 's{t}-' || g, 1, now(), gen_random_uuid(), '\\x7b7d'::bytea{values}"
                    f" FROM generate_series(1, {rows}) AS g"
                )
            )
    with engine.connect() as connection:
        last = connection.execute(
            text(f"SELECT tx, position FROM {table} ORDER BY tx, position OFFSET :n LIMIT 1"),
            {"n": transactions * rows * 2 // 3 - 1},
        ).one()
    return int(last.tx), int(last.position)


def _index_scan(engine: Any, statement: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The one index scan of ``statement``'s plan, as run (EXPLAIN ANALYZE) with ``params``."""
    compiled = statement.compile(engine)
    with engine.connect() as connection:
        # Only an index can serve the read: the question is where its scan starts.
        connection.execute(text("SET LOCAL enable_seqscan = off"))
        connection.execute(text("SET LOCAL enable_bitmapscan = off"))
        cursor = connection.connection.driver_connection.cursor()
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}", {**compiled.params, **params})
        nodes = [cursor.fetchone()[0][0]["Plan"]]
    scans = []
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if node["Node Type"] == "Index Scan":
            scans.append(node)
    assert len(scans) == 1, scans
    return scans[0]


def test_a_page_read_starts_at_the_checkpoint_however_many_rows_were_delivered(
    pg_store: Store,
) -> None:
    # Delivered rows stay in the outbox until retention purges them. The read must seek to the
    # checkpoint in the (tx, position) index, not scan from the first row and filter: that cost
    # grew with every row delivered (a catch-up over n rows cost n squared).
    engine = pg_store.engine
    tx, position = _fill(engine, "tidings_outbox", transactions=30, rows=100, outbox=True)
    config = RelayConfig(engine, ledger_handlers("ledger"))
    statement = Follower(config, clock=time.monotonic)._read_statement
    scan = _index_scan(engine, statement, {"after_tx": tx, "after_position": position})
    assert scan["Actual Rows"] == config.batch_size
    # At most the checkpoint's own transaction (100 rows) is read and dropped, not the 2,000
    # rows before it.
    assert scan.get("Rows Removed by Filter", 0) <= 100, scan


def test_the_event_stores_log_is_read_from_the_checkpoint_too(pg_store: Store) -> None:
    # The same for the event store's events table: read by projections, by subscribers and by
    # a relay that follows the store. Without an index on (tx, position) every page was a scan
    # and a sort of the whole table.
    engine = pg_store.engine
    schema = EventStoreSchema(MetaData(), prefix="plans_")
    schema.create_all(engine)
    tx, position = _fill(engine, schema.events.name, transactions=30, rows=100)
    checkpoint = {"after_tx": tx, "after_position": position}
    page = log_page_statement(schema, "postgresql")
    assert page is not None
    scan = _index_scan(engine, page, {**checkpoint, "page_limit": 500})
    assert scan["Index Name"] == "plans_events_tx_position"
    assert scan["Actual Rows"] == 500
    assert scan.get("Rows Removed by Filter", 0) <= 100, scan
    followed = RelayConfig(engine, ledger_handlers("ledger"), log=schema.events)
    scan = _index_scan(engine, Follower(followed, clock=time.monotonic)._read_statement, checkpoint)
    assert scan.get("Rows Removed by Filter", 0) <= 100, scan
