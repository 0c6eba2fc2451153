"""Event store benchmark: tidings beside the ``eventsourcing`` package (9.5.6), same workload.

Both sides are durable with their default settings (SQLite in WAL mode with fsync on commit;
PostgreSQL with its server defaults), one transaction per command, on the same machine, in the
same run. Workloads:

(a) commands, one event each: half create an aggregate, half load and update a random one;
(b) appends of 100 events per save;
(c) loading a 10,000-event aggregate, with and without a snapshot;
(d) projection catch-up over the events of (a), read model and checkpoint in the database.

Also printed: the raw driver ceiling, plain sqlite3 and psycopg inserting one row per commit.

    python bench/eventstore.py [--quick] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypedDict, TypeVar
from uuid import UUID

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate as PeerAggregate
from eventsourcing.domain import event as peer_event
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from psycopg.sql import SQL, Identifier
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
)
from sqlalchemy import insert as sql_insert
from sqlalchemy import update as sql_update

from tidings import EventSourcedAggregate, applies, event
from tidings.core.envelope import Envelope
from tidings.eventsourcing import (
    EventSourcedRepository,
    EventStore,
    EventStoreParticipant,
    Projection,
    ProjectionRunner,
    SnapshotPolicy,
    default_schema,
)
from tidings.persistence.sql import SqlUnitOfWork
from tidings.persistence.sqlite import sqlite_engine


class ConnectionParameters(TypedDict):
    """``psycopg.connect`` keywords (a TypedDict, so ``**`` keeps each one's type)."""

    host: str
    port: int
    user: str
    dbname: str


POSTGRES: ConnectionParameters = {
    "host": "127.0.0.1",
    "port": 5432,
    "user": "postgres",
    "dbname": "test",
}

# -- tidings side ------------------------------------------------------------------------------


@event(name="bench.Opened")
class Opened:
    owner: str


@event(name="bench.Deposited")
class Deposited:
    amount: int


@event(name="bench.AccountState")
class AccountState:
    owner: str
    balance: int


class Account(EventSourcedAggregate):
    owner: str
    balance: int

    @classmethod
    def open(cls, id: str, owner: str) -> Account:
        account = cls.blank(id)
        account.record(Opened(owner))
        return account

    def deposit(self, amount: int) -> None:
        self.record(Deposited(amount))

    @applies(Opened)
    def _opened(self, opened: Opened) -> None:
        self.owner = opened.owner
        self.balance = 0

    @applies(Deposited)
    def _deposited(self, deposited: Deposited) -> None:
        self.balance += deposited.amount

    def to_snapshot(self) -> AccountState:
        return AccountState(self.owner, self.balance)

    @classmethod
    def from_snapshot(cls, id: Any, version: int, state: AccountState) -> Account:
        account = cls.blank(id)
        account.owner, account.balance = state.owner, state.balance
        return account


class Balances(Projection):
    """The read model: a balance per account, applied a page at a time with executemany."""

    name = "bench-balances"

    def define_tables(self, metadata: MetaData, suffix: str) -> dict[str, Table]:
        table = Table(
            f"bench_balances{suffix}",
            metadata,
            Column("account", String(100), primary_key=True),
            Column("balance", Integer, nullable=False),
        )
        self.open_account = sql_insert(table)
        self.add_to_balance = (
            sql_update(table)
            .where(table.c.account == bindparam("acct"))
            .values(balance=table.c.balance + bindparam("delta"))
        )
        return {"balances": table}

    def handle_page(
        self, envelopes: list[Envelope[Any]], conn: Connection, tables: dict[str, Table]
    ) -> None:
        opened: list[dict[str, Any]] = []
        deltas: dict[str | None, int] = {}
        for envelope in envelopes:
            if isinstance(envelope.event, Opened):
                opened.append({"account": envelope.stream_id, "balance": 0})
            else:
                deltas[envelope.stream_id] = (
                    deltas.get(envelope.stream_id, 0) + envelope.event.amount
                )
        # Opened always precedes a stream's deposits, so inserting first keeps log order.
        if opened:
            conn.execute(self.open_account, opened)
        if deltas:
            conn.execute(self.add_to_balance, [{"acct": a, "delta": d} for a, d in deltas.items()])


class TidingsSide:
    """Commands through the unit of work: repository load, record, commit."""

    name = "tidings uow"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        default_schema.create_all(engine)
        self.participant = EventStoreParticipant()
        self.uow = SqlUnitOfWork(engine, participants=[self.participant])
        self.store = EventStore(engine, snapshots=SnapshotPolicy(every=1_000_000_000))

    def create(self, id: str) -> None:
        with self.uow:
            EventSourcedRepository(self.uow, self.participant).add(Account.open(id, "bench"))
            self.uow.commit()

    def update(self, id: str) -> None:
        with self.uow:
            EventSourcedRepository(self.uow, self.participant).load(Account, id).deposit(1)
            self.uow.commit()

    def start_batches(self, id: str) -> Any:
        account = Account.open(id, "bench")
        self.store.save(account)
        return account

    def append_batch(self, account: Any, size: int) -> None:
        for _ in range(size):
            account.deposit(1)
        with self.uow:
            EventSourcedRepository(self.uow, self.participant).add(account)
            self.uow.commit()

    def build_long(self, id: str, events: int, snapshot: bool) -> None:
        account = Account.open(id, "bench")
        self.store.save(account)
        while account.version < events:
            for _ in range(min(1000, events - account.version)):
                account.deposit(1)
            self.store.save(account)
        if snapshot:
            with self.engine.begin() as conn:
                row = {
                    "stream_id": account.stream_id,
                    "stream_version": account.version,
                    "state_type": "bench.AccountState",
                    "state_version": 1,
                    "state": self.store.codec.encode_payload(account.to_snapshot()),
                    "taken_at": time_now(),
                }
                conn.execute(sql_insert(default_schema.snapshots), [row])

    def load(self, id: str, snapshot: bool) -> int:
        # Replay (or snapshot + tail) measured as such: not served by the aggregate cache.
        return self.store.load(Account, id, use_snapshots=snapshot, use_cache=False).version

    def catch_up(self) -> int:
        return ProjectionRunner(self.engine, Balances(), page_size=1000).catch_up()


class TidingsStoreSide(TidingsSide):
    """The same commands through the store's direct API (load, then save), as the peer's
    ``repository.get`` + ``app.save`` do: no unit of work, no handlers."""

    name = "tidings store"

    def create(self, id: str) -> None:
        self.store.save(Account.open(id, "bench"))

    def update(self, id: str) -> None:
        account = self.store.load(Account, id)
        account.deposit(1)
        self.store.save(account)


def time_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


# -- eventsourcing side ------------------------------------------------------------------------


class PeerAccount(PeerAggregate):
    """The same account on the peer (its classes are registered by topic: declare them once)."""

    @peer_event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = 0

    @peer_event("Deposited")
    def deposit(self, amount: int) -> None:
        self.balance += amount


class Bank(Application[Any]):
    is_snapshotting_enabled = True


class SQLiteBalancesView(SQLiteTrackingRecorder):
    """The peer's read model: its documented pattern, view change + tracking per event."""

    table = "peer_balances"

    def construct_create_table_statements(self) -> list[str]:
        statements = super().construct_create_table_statements()
        statements.append(
            "CREATE TABLE IF NOT EXISTS peer_balances "
            "(account TEXT PRIMARY KEY, balance INTEGER NOT NULL)"
        )
        return statements

    def apply(self, account: str, delta: int | None, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            if delta is None:
                c.execute(f"INSERT INTO {self.table} VALUES (?, 0)", (account,))
            else:
                c.execute(
                    f"UPDATE {self.table} SET balance = balance + ? WHERE account = ?",
                    (delta, account),
                )
            self._insert_tracking(c, tracking)


class PostgresBalancesView(PostgresTrackingRecorder):
    """The same read model on PostgreSQL, in the peer's schema."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.table = f'"{datastore.schema}".peer_balances'
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0}.peer_balances "
                "(account TEXT PRIMARY KEY, balance INTEGER NOT NULL)"
            ).format(Identifier(datastore.schema))
        )

    def apply(self, account: str, delta: int | None, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            if delta is None:
                c.execute(f"INSERT INTO {self.table} VALUES (%s, 0)", (account,))
            else:
                c.execute(
                    f"UPDATE {self.table} SET balance = balance + %s WHERE account = %s",
                    (delta, account),
                )
            self._insert_tracking(c, tracking)


class PeerSide:
    name = "eventsourcing"

    def __init__(
        self, env: dict[str, str], view_class: type[SQLiteBalancesView] | type[PostgresBalancesView]
    ) -> None:
        self.env = env
        self.view_class = view_class
        self.app = Bank(env=env)
        self.ids: dict[str, UUID] = {}

    def create(self, id: str) -> None:
        account = PeerAccount("bench")
        self.ids[id] = account.id
        self.app.save(account)

    def update(self, id: str) -> None:
        account: PeerAccount = self.app.repository.get(self.ids[id])
        account.deposit(1)
        self.app.save(account)

    def start_batches(self, id: str) -> PeerAccount:
        account = PeerAccount("bench")
        self.app.save(account)
        return account

    def append_batch(self, account: PeerAccount, size: int) -> None:
        for _ in range(size):
            account.deposit(1)
        self.app.save(account)

    def build_long(self, id: str, events: int, snapshot: bool) -> None:
        account = PeerAccount("bench")
        self.ids[id] = account.id
        self.app.save(account)
        while account.version < events:
            for _ in range(min(1000, events - account.version)):
                account.deposit(1)
            self.app.save(account)
        if snapshot:
            self.app.take_snapshot(account.id)

    def load(self, id: str, snapshot: bool) -> int:
        return int(self.app.repository.get(self.ids[id]).version)

    def catch_up(self) -> int:
        from eventsourcing.persistence import InfrastructureFactory

        view = InfrastructureFactory.construct(
            env={**self.env, "CREATE_TABLE": "y"}
        ).tracking_recorder(self.view_class)
        assert isinstance(view, self.view_class)  # the factory annotates only its base class
        mapper = self.app.mapper
        start = (view.max_tracking_id(self.app.name) or 0) + 1
        done = 0
        while True:
            notifications = self.app.recorder.select_notifications(start=start, limit=1000)
            if not notifications:
                return done
            for notification in notifications:
                domain_event: Any = mapper.to_domain_event(notification)
                tracking = Tracking(self.app.name, notification.id)
                amount = getattr(domain_event, "amount", None)
                view.apply(str(domain_event.originator_id), amount, tracking)
                done += 1
            start = notifications[-1].id + 1


def peer_side(env: dict[str, str], backend: str) -> PeerSide:
    return PeerSide(env, SQLiteBalancesView if backend == "sqlite" else PostgresBalancesView)


# -- measuring ---------------------------------------------------------------------------------

T = TypeVar("T")


class Side(Protocol):
    """One side of the comparison: the same commands, each through its own store."""

    name: str

    def create(self, id: str) -> None: ...
    def update(self, id: str) -> None: ...
    def start_batches(self, id: str) -> Any:
        """A new aggregate, saved: what :meth:`append_batch` appends to."""

    def append_batch(self, account: Any, size: int) -> None: ...
    def build_long(self, id: str, events: int, snapshot: bool) -> None: ...
    def load(self, id: str, snapshot: bool) -> int: ...
    def catch_up(self) -> int:
        """The side's projection catching up; returns the events it applied."""


@dataclass
class Result:
    backend: str
    side: str
    workload: str
    events: int
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def timed(fn: Callable[[], T], latencies: list[float]) -> T:
    start = time.perf_counter()
    result = fn()
    latencies.append(time.perf_counter() - start)
    return result


def workload_a(side: Side, backend: str, commands: int, seed: int) -> Result:
    rng = random.Random(seed)
    created: list[str] = []
    latencies: list[float] = []
    started = time.perf_counter()
    for i in range(commands):
        if i % 2 == 0:
            new_id = uuid.uuid4().hex
            timed(partial(side.create, new_id), latencies)
            created.append(new_id)
        else:
            chosen = rng.choice(created)
            timed(partial(side.update, chosen), latencies)
    return Result(
        backend, side.name, "a) commands", commands, time.perf_counter() - started, latencies
    )


def workload_b(side: Side, backend: str, saves: int) -> Result:
    account = side.start_batches(uuid.uuid4().hex)
    latencies: list[float] = []
    started = time.perf_counter()
    for _ in range(saves):
        timed(lambda: side.append_batch(account, 100), latencies)
    seconds = time.perf_counter() - started
    return Result(backend, side.name, "b) 100/save", saves * 100, seconds, latencies)


def workload_c(side: Side, backend: str, events: int, repeats: int) -> list[Result]:
    results = []
    for snapshot in (False, True):
        id = uuid.uuid4().hex
        side.build_long(id, events, snapshot)
        latencies: list[float] = []
        for _ in range(repeats):
            version = timed(partial(side.load, id, snapshot), latencies)
            assert version == events, (side.name, version)
        median = statistics.median(latencies)
        label = "c) load, snapshot" if snapshot else "c) load, replay"
        results.append(Result(backend, side.name, label, events, median, latencies))
    return results


def workload_d(side: Side, backend: str) -> Result:
    started = time.perf_counter()
    done = side.catch_up()
    return Result(backend, side.name, "d) projection", done, time.perf_counter() - started)


def ceiling_sqlite(directory: Path, rows: int) -> Result:
    conn = sqlite3.connect(directory / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, data BLOB)")
    latencies: list[float] = []
    started = time.perf_counter()
    for _ in range(rows):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO raw (data) VALUES (?)", (b'{"amount":1}',))
        conn.execute("COMMIT")
        latencies.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - started
    conn.close()
    return Result("sqlite", "raw sqlite3", "1 row/commit", rows, seconds, latencies)


def ceiling_postgres(schema: str, rows: int) -> Result:
    with psycopg.connect(**POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{schema}".raw (id BIGSERIAL PRIMARY KEY, data BYTEA)')
        latencies: list[float] = []
        started = time.perf_counter()
        for _ in range(rows):
            t0 = time.perf_counter()
            conn.execute(f'INSERT INTO "{schema}".raw (data) VALUES (%s)', (b'{"amount":1}',))
            latencies.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - started
    return Result("postgres", "raw psycopg", "1 row/commit", rows, seconds, latencies)


# The same commands as (a), written by hand in the raw driver: what the database itself costs
# for tidings' schema (four indexes and a foreign key on the events table) and the statements
# tidings sends: a create is one event insert; an update reads the stream's events after the
# version the application already knows (tidings' aggregate cache; normally none), then inserts
# one event; each statement is a transaction of its own, as tidings runs them. The one-row
# ceiling above has no indexes and no read.
_RAW_INSERT = (
    "INSERT INTO tidings_events (event_id, event_type, event_version, stream_id, stream_version,"
    " previous_version, occurred_at, correlation_id, causation_id, producer, headers, payload)"
    " VALUES ({marks})"
)
_RAW_SELECT = (
    "SELECT stream_version, event_type, event_version, payload FROM tidings_events"
    " WHERE stream_id = {m} AND stream_version > {m} AND stream_version <= {m}"
    " ORDER BY stream_version"
)


def same_sql_commands(
    backend: str, execute: Callable[[str, tuple[Any, ...]], list[Any]], mark: str,
    encode_id: Callable[[uuid.UUID], Any], moment: Any, commands: int,
) -> Result:  # fmt: skip
    insert_sql = _RAW_INSERT.format(marks=", ".join([mark] * 12))
    select_sql = _RAW_SELECT.format(m=mark)
    rng = random.Random(7)
    versions: dict[str, int] = {}
    created: list[str] = []
    latencies: list[float] = []
    started = time.perf_counter()
    for i in range(commands):
        t0 = time.perf_counter()
        if i % 2 == 0:
            stream, version = f"Account-{uuid.uuid4().hex}", 0
            created.append(stream)
        else:
            stream = rng.choice(created)
            version = versions[stream]
            newer = execute(select_sql, (stream, version, 2**31 - 1))
            version = newer[-1][0] if newer else version
        event_id = uuid.uuid4()
        execute(
            insert_sql,
            (encode_id(event_id), "bench.Deposited", 1, stream, version + 1, version or None,
             moment, encode_id(event_id), None, None, "{}", b'{"amount":1}'),
        )  # fmt: skip
        versions[stream] = version + 1
        latencies.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - started
    return Result(backend, "raw same SQL", "a) commands", commands, seconds, latencies)


def same_sql_sqlite(path: Path, commands: int) -> Result:
    engine = sqlite_engine(path)
    default_schema.create_all(engine)
    engine.dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    try:
        return same_sql_commands(
            "sqlite",
            lambda sql, params: conn.execute(sql, params).fetchall(),
            "?",
            lambda value: value.hex,
            "2026-01-01 00:00:00.000000",
            commands,
        )
    finally:
        conn.close()


def same_sql_postgres(schema: str, commands: int) -> Result:
    engine = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        connect_args={"options": f"-csearch_path={schema}"},
    )
    default_schema.create_all(engine)
    engine.dispose()
    with psycopg.connect(**POSTGRES, options=f"-csearch_path={schema}", autocommit=True) as conn:

        def execute(sql: str, params: tuple[Any, ...]) -> list[Any]:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

        return same_sql_commands(
            "postgres", execute, "%s", lambda value: value, time_now(), commands
        )


@contextmanager
def postgres_schema(label: str) -> Iterator[str]:
    schema = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with psycopg.connect(**POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@dataclass
class Sizes:
    commands: int
    batch_saves: int
    long_stream: int
    load_repeats: int
    raw_rows: int


def run_backend(backend: str, sizes: Sizes, directory: Path) -> list[Result]:
    results: list[Result] = []
    with (
        postgres_schema("tidings") as tidings_schema,
        postgres_schema("peer") as peer_schema,
        postgres_schema("raw") as raw_schema,
    ):
        if backend == "sqlite":
            engine = sqlite_engine(directory / "tidings.db")
            peer_env = {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(directory / "peer.db"),
            }
        else:
            engine = create_engine(
                "postgresql+psycopg://postgres@127.0.0.1:5432/test",
                connect_args={"options": f"-csearch_path={tidings_schema}"},
            )
            peer_env = {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": "test",
                "POSTGRES_HOST": "127.0.0.1",
                "POSTGRES_PORT": "5432",
                "POSTGRES_USER": "postgres",
                "POSTGRES_PASSWORD": "",
                "POSTGRES_SCHEMA": peer_schema,
            }
        sides: list[Side] = [TidingsSide(engine), peer_side(peer_env, backend)]
        for side in sides:
            results.append(workload_a(side, backend, sizes.commands, seed=7))
        # (d) right after (a): each side's projection catches up over exactly (a)'s events.
        for side in sides:
            results.append(workload_d(side, backend))
        # The direct store API on the same commands, a quarter of the count to keep it short.
        results.append(workload_a(TidingsStoreSide(engine), backend, sizes.commands // 4, seed=7))
        for side in sides:
            results.append(workload_b(side, backend, sizes.batch_saves))
        for side in sides:
            results.extend(workload_c(side, backend, sizes.long_stream, sizes.load_repeats))
        if backend == "sqlite":
            results.append(ceiling_sqlite(directory, sizes.raw_rows))
            results.append(same_sql_sqlite(directory / "same-sql.db", sizes.commands))
        else:
            results.append(ceiling_postgres(tidings_schema, sizes.raw_rows))
            results.append(same_sql_postgres(raw_schema, sizes.commands))
        engine.dispose()
    return results


def fmt(value: float | None) -> str:
    return f"{value:8.2f}" if value is not None else "       -"


def report(results: list[Result]) -> list[str]:
    print(f"{'backend':<9} {'workload':<20} {'side':<14} {'events':>7} {'events/s':>10} "
          f"{'p50 ms':>8} {'p99 ms':>8}")  # fmt: skip
    for r in results:
        print(
            f"{r.backend:<9} {r.workload:<20} {r.side:<14} {r.events:>7} {r.rate:>10,.0f} "
            f"{fmt(r.percentile(0.5))} {fmt(r.percentile(0.99))}"
        )
    by = {(r.backend, r.side, r.workload): r for r in results}
    verdicts: list[str] = []

    def target(label: str, value: float, goal: float) -> None:
        verdicts.append(f"{'PASS' if value >= goal else 'MISS'}  {label}: {value:.2f} (>= {goal})")

    for backend, factor in (("sqlite", 2.0), ("postgres", 4.0)):
        peer = by.get((backend, "eventsourcing", "a) commands"))
        raw = next(
            (r for r in results if r.backend == backend and r.workload == "1 row/commit"), None
        )
        same_sql = by.get((backend, "raw same SQL", "a) commands"))
        if same_sql and peer and raw:
            # What each (a) target allows per command, beside what the raw driver alone takes
            # for the statements a command needs: when a budget is below that time, no unit of
            # work running those statements can meet it, whatever its own cost.
            budgets = (
                (f"{factor:g}x eventsourcing", 1e6 / (factor * peer.rate)),
                ("80% of raw 1-row commits", 1e6 / (0.8 * raw.rate)),
            )
            for label, budget in budgets:
                verdicts.append(
                    f"info  {backend} (a) {label} allows {budget:.0f} us per command; the raw "
                    f"driver alone takes {1e6 / same_sql.rate:.0f} us for its statements"
                )
        for name in ("tidings uow", "tidings store"):
            mine = by.get((backend, name, "a) commands"))
            if mine and peer:
                target(f"{backend} (a) {name} / eventsourcing", mine.rate / peer.rate, factor)
            if mine and raw:
                target(f"{backend} (a) {name} / raw 1-row commits", mine.rate / raw.rate, 0.8)
            if mine and same_sql:
                verdicts.append(
                    f"info  {backend} (a) {name} / the same SQL in the raw driver: "
                    f"{mine.rate / same_sql.rate:.2f}"
                )
        replay = by.get((backend, "tidings uow", "c) load, replay"))
        if replay:
            target(f"{backend} (c) replay, thousand events/s", replay.rate / 1000, 150)
        mine_d = by.get((backend, "tidings uow", "d) projection"))
        peer_d = by.get((backend, "eventsourcing", "d) projection"))
        if mine_d and peer_d:
            target(f"{backend} (d) tidings / eventsourcing", mine_d.rate / peer_d.rate, 10.0)
    print()
    for line in verdicts:
        print(line)
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (well under 2 min)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    sizes = (
        Sizes(commands=2_000, batch_saves=20, long_stream=10_000, load_repeats=2, raw_rows=1_000)
        if args.quick
        else Sizes(
            commands=20_000, batch_saves=100, long_stream=10_000, load_repeats=3, raw_rows=3_000
        )
    )
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(
        prefix="tidings-bench-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        for backend in backends:
            started = time.perf_counter()
            print(f"running {backend} ...", file=sys.stderr, flush=True)
            results.extend(run_backend(backend, sizes, Path(tmp)))
            print(f"{backend}: {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    report(results)


if __name__ == "__main__":
    main()
