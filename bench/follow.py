"""After-commit subscriber benchmark: tidings' relay beside ``eventsourcing`` 9.5.6's follower.

Same machine, same run, both durable with default settings (SQLite WAL with fsync on commit;
PostgreSQL server defaults). Two measures per store:

* **throughput**: a backlog of events is written first, then the subscriber catches up; events/s
  while catching up. tidings: the relay, one subscriber whose handler inserts one row per event
  (its trivial effect) committed with its checkpoint in the same transaction, written two ways:
  ``orm``, a per-event handler doing ``ctx.uow.session.add(Effect(...))`` (the ORM's per-object
  bookkeeping and flush cost about as much as everything else together), and ``batch``, a
  batch handler (``handle_batch``, see :class:`tidings.outbox.subscribers.BatchHandler`)
  inserting the batch's rows in one ``INSERT`` (one row per event, same table, same
  transaction as the checkpoint); ``bare``: the checkpoint alone. eventsourcing: a
  ``ProcessApplication`` following an ``Application``, with a policy that saves one new
  aggregate per event (``bare``: records nothing; its tracking record is committed per event).
* **latency**: writers commit one event per transaction at a steady 500 events/s in total while
  the subscriber runs; commit-to-handler latency p50/p99 (from the moment the writer's commit
  returned to the moment the handler ran, 0 when the handler ran first). tidings: as deployed,
  the relay in a process of its own (``tidings relay``) and four writer processes, each warmed
  up by one unit of work before the measure; the relay is woken by the writers' NOTIFY on
  PostgreSQL and polls on SQLite (nothing crosses processes there). eventsourcing: its
  ``MultiThreadedRunner``, writers and follower threads of one process. ``rate/s`` is the rate
  the writers reached.

Targets: tidings throughput >= 10x the peer's on each store (judged on the batch handler; the
per-event ORM handler's ratio is printed beside it); PostgreSQL p99 < 20 ms.

    python bench/follow.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate as EsAggregate
from eventsourcing.system import MultiThreadedRunner, ProcessApplication, System
from sqlalchemy import (
    Engine,
    Float,
    Integer,
    String,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tidings import Aggregate, HandlerContext, Handlers, Timing
from tidings import event as declare_event
from tidings.cli.outbox_commands import engine_for
from tidings.outbox import Relay, RelayConfig, create_tables
from tidings.outbox import tables as outbox_tables
from tidings.persistence.sql import SqlUnitOfWork
from tidings.persistence.sqlite import sqlite_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _services import require

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RATE = 500


class Base(DeclarativeBase):
    pass


@declare_event(name="bench.follow.Ticked")
class Ticked:
    seq: int


class Ticker(Base, Aggregate):
    __tablename__ = "bench_follow_tickers"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)

    @classmethod
    def tick(cls, seq: int) -> Ticker:
        ticker = cls(id=uuid.uuid4().hex, version=0)
        ticker.record(Ticked(seq=seq))
        return ticker


class Effect(Base):
    __tablename__ = "bench_follow_effects"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    handled_at: Mapped[float] = mapped_column(Float)


EFFECT_INSERT = insert(Base.metadata.tables["bench_follow_effects"])


@dataclass
class Result:
    throughput: float  # with the trivial effect (tidings: per-event ORM handler)
    bare_throughput: float  # checkpoint / tracking record only
    p50_ms: float
    p99_ms: float
    rate: float
    batch_throughput: float = 0.0  # tidings only: the effect written by a batch handler


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 * 1000, p99 * 1000


WRITERS = 4


def paced(count: int, write: Callable[[int], None], committed: dict[int, float]) -> float:
    """Commit ``count`` events at RATE per second in total; returns the achieved rate.

    One commit per event, from WRITERS threads: a single connection cannot reach 500 durable
    commits per second on an ordinary disk (each waits for its fsync), several can (the server
    groups their flushes), as an application's concurrent requests would.
    """
    start = time.time()

    def writer(first: int) -> None:
        for seq in range(first, count, WRITERS):
            pause = start + seq / RATE - time.time()
            if pause > 0:
                time.sleep(pause)
            write(seq)
            committed[seq] = time.time()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return count / (time.time() - start)


def latencies_of(committed: dict[int, float], handled: dict[int, float]) -> list[float]:
    return [max(0.0, handled[seq] - committed[seq]) for seq in committed if seq in handled]


def wait_until(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


# -- tidings ---------------------------------------------------------------------------------


def tidings_handlers(handled: dict[int, float]) -> Handlers:
    handlers = Handlers()

    @handlers.after_commit(Ticked, name="bench")
    def on_tick(ticked: Ticked, ctx: HandlerContext) -> None:
        uow = ctx.uow
        assert isinstance(uow, SqlUnitOfWork)
        now = time.time()
        uow.session.add(Effect(seq=ticked.seq, handled_at=now))
        handled[ticked.seq] = now

    @handlers.after_commit(Ticked, name="bench-bare")
    def on_tick_bare(ticked: Ticked) -> None:
        handled[ticked.seq] = time.time()

    handlers.add(Ticked, EffectWriter(handled), when=Timing.AFTER_COMMIT, name="bench-batch")
    return handlers


class EffectWriter:
    """The same trivial effect as a batch handler: one Effect row per event, the relay batch's
    rows in one INSERT, in the transaction that moves the checkpoint."""

    def __init__(self, handled: dict[int, float]) -> None:
        self.handled = handled

    def __call__(self, ticked: Ticked, ctx: HandlerContext) -> None:
        self.handle_batch([ctx])

    def handle_batch(self, contexts: Sequence[HandlerContext]) -> None:
        uow = contexts[0].uow
        assert isinstance(uow, SqlUnitOfWork)
        now = time.time()
        seqs = [ctx.envelope.event.seq for ctx in contexts]
        # The table's INSERT (Core): one executemany for the batch, no ORM objects.
        uow.session.execute(EFFECT_INSERT, [{"seq": seq, "handled_at": now} for seq in seqs])
        for seq in seqs:
            self.handled[seq] = now


def catch_up(engine: Engine, subscriber: str, backlog: int) -> float:
    handled: dict[int, float] = {}
    config = RelayConfig(
        engine,
        tidings_handlers(handled),
        partitions=1,
        batch_size=1000,
        subscribers=[subscriber],
    )
    relay = Relay(config, node="bench")
    relay.prepare()
    started = time.perf_counter()
    relay.run_until_idle()
    elapsed = time.perf_counter() - started
    assert len(handled) == backlog, f"tidings handled {len(handled)} of {backlog}"
    relay.leases.release_all()
    relay.follower.close()
    return backlog / elapsed


def run_tidings(engine: Engine, url: str, backlog: int, steady: int) -> Result:
    create_tables(engine)
    Base.metadata.create_all(engine)
    config = RelayConfig(engine, tidings_handlers({}), partitions=1)
    for start in range(0, backlog, 200):
        with config.unit_of_work() as uow:
            for seq in range(start, min(backlog, start + 200)):
                uow.add(Ticker.tick(seq))
            uow.commit()
    throughput = catch_up(engine, "bench", backlog)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM bench_follow_effects"))
    batched = catch_up(engine, "bench-batch", backlog)
    bare = catch_up(engine, "bench-bare", backlog)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM bench_follow_effects"))

    # Latency as deployed: `tidings relay` in its own process, writers in theirs (a single
    # Python process cannot commit 500 ORM units of work per second and relay them too).
    relay_process = child("relay", url)
    try:
        wait_until(lambda: _relay_ready(engine))
        begin = time.time() + 4.0  # lets the writers import, connect and warm up first
        writers = [
            child("writer", url, str(first), str(WRITERS), str(steady), str(begin))
            for first in range(WRITERS)
        ]
        committed: dict[int, float] = {}
        for writer in writers:
            out, _ = writer.communicate(timeout=120)
            committed.update({int(k): v for k, v in json.loads(out).items()})
        rate = steady / (max(committed.values()) - begin)
        wait_until(lambda: _count_effects(engine) >= steady)
    finally:
        relay_process.terminate()
        relay_process.wait(30)
    with engine.connect() as conn:
        handled = dict(conn.execute(select(Effect.seq, Effect.handled_at)).all())
    p50, p99 = percentiles(latencies_of(committed, handled))
    return Result(throughput, bare, p50, p99, rate, batched)


def _relay_ready(engine: Engine) -> bool:
    leases = outbox_tables.leases
    with engine.connect() as conn:
        owners = conn.execute(select(leases.c.owner).where(leases.c.subscriber == "bench"))
        return any(owner is not None for owner in owners.scalars())


def _count_effects(engine: Engine) -> int:
    """Effects of measured events (the writers' warm-up events have negative numbers)."""
    with engine.connect() as conn:
        query = select(func.count()).select_from(Effect).where(Effect.seq >= 0)
        return int(conn.execute(query).scalar_one())


def child(role: str, url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", role, url, *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def relay_child(url: str) -> None:
    engine = engine_for(url)
    config = RelayConfig(engine, tidings_handlers({}), partitions=1, subscribers=["bench"])
    relay = Relay(config, node="bench")
    signal.signal(signal.SIGTERM, lambda *_: relay.stop(timeout=0))
    relay.run()


def writer_child(url: str, first: int, step: int, count: int, begin: float) -> None:
    engine = engine_for(url)
    config = RelayConfig(engine, tidings_handlers({}), partitions=1)

    def write(seq: int) -> None:
        with config.unit_of_work() as uow:
            uow.add(Ticker.tick(seq))
            uow.commit()

    # One unit of work before the measured ones: the process's first pays for connecting,
    # configuring the mappers and compiling the statements, which the peer's writer (a thread
    # of the process that wrote its backlog) has already paid. Its event is delivered too, with
    # a negative number the measure leaves out.
    write(-1 - first)
    committed: dict[int, float] = {}
    for seq in range(first, count, step):
        pause = begin + seq / RATE - time.time()
        if pause > 0:
            time.sleep(pause)
        write(seq)
        committed[seq] = time.time()
    print(json.dumps(committed))


# -- eventsourcing ---------------------------------------------------------------------------


class Counter(EsAggregate):
    def __init__(self, seq: int) -> None:
        self.seq = seq


class Writer(Application[Any]):
    pass


class Booking(EsAggregate):
    """The peer's trivial effect: one new aggregate, saved with the tracking record."""

    def __init__(self, seq: int) -> None:
        self.seq = seq


class Follower(ProcessApplication[Any]):
    def policy(self, domain_event: Any, processing_event: Any) -> None:
        processing_event.collect_events(Booking(domain_event.seq))
        PEER_HANDLED[domain_event.seq] = time.time()


class BareFollower(ProcessApplication[Any]):
    def policy(self, domain_event: Any, processing_event: Any) -> None:
        PEER_HANDLED[domain_event.seq] = time.time()


PEER_HANDLED: dict[int, float] = {}


def run_peer(env: dict[str, str], backlog: int, steady: int) -> Result:
    handled = PEER_HANDLED
    writer = Writer(env=env)
    for start in range(0, backlog, 200):
        writer.save(*[Counter(seq) for seq in range(start, min(backlog, start + 200))])
    rates = []
    for cls in (Follower, BareFollower):
        handled.clear()
        follower = cls(env=env)
        follower.follow(writer.name, writer.notification_log)
        started = time.perf_counter()
        follower.pull_and_process(writer.name)
        rates.append(backlog / (time.perf_counter() - started))
        assert len(handled) == backlog, f"eventsourcing handled {len(handled)} of {backlog}"
        follower.close()
    writer.close()

    handled.clear()
    committed: dict[int, float] = {}
    runner: MultiThreadedRunner[Any] = MultiThreadedRunner(System([[Writer, Follower]]), env=env)
    runner.start()
    try:
        app = runner.get(Writer)
        offset = backlog  # the follower resumes after the backlog it already processed

        def write(seq: int) -> None:
            app.save(Counter(offset + seq))

        rate = paced(steady, write, committed)
        committed = {offset + seq: at for seq, at in committed.items()}
        wait_until(lambda: len(handled) >= steady)
    finally:
        runner.stop()
    p50, p99 = percentiles(latencies_of(committed, handled))
    return Result(rates[0], rates[1], p50, p99, rate)


# -- stores ----------------------------------------------------------------------------------


@contextmanager
def sqlite_store() -> Iterator[tuple[Engine, str, dict[str, str]]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tidings.sqlite"
        engine = sqlite_engine(path)
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "WRITER_SQLITE_DBNAME": str(Path(tmp) / "writer.sqlite"),
            "FOLLOWER_SQLITE_DBNAME": str(Path(tmp) / "follower.sqlite"),
            "BAREFOLLOWER_SQLITE_DBNAME": str(Path(tmp) / "bare.sqlite"),
        }
        try:
            yield engine, f"sqlite:///{path}", env
        finally:
            engine.dispose()


@contextmanager
def postgres_store() -> Iterator[tuple[Engine, str, dict[str, str]]]:
    schema = f"bench_follow_{uuid.uuid4().hex[:8]}"
    peer_schema = f"{schema}_peer"
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(text(f'CREATE SCHEMA "{peer_schema}"'))
    engine = create_engine(POSTGRES, pool_size=10)

    @event.listens_for(engine, "connect")
    def search_path(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f'SET search_path TO "{schema}"')
        dbapi_connection.autocommit = autocommit

    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": "test",
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": "5432",
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": "",
        "POSTGRES_SCHEMA": peer_schema,
    }
    try:
        yield engine, f"{POSTGRES}?options=-csearch_path%3D{schema}", env
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{peer_schema}" CASCADE'))
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller backlog, shorter run")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, url, *rest = args.child
        if role == "relay":
            relay_child(url)
        else:
            writer_child(url, int(rest[0]), int(rest[1]), int(rest[2]), float(rest[3]))
        return 0
    require("postgres")
    backlog, peer_backlog, steady = (3000, 500, 500) if args.quick else (20000, 2000, 2500)

    rows: list[tuple[str, Result, Result]] = []
    for name, store in (("sqlite", sqlite_store), ("postgres", postgres_store)):
        with store() as (engine, url, env):
            ours = run_tidings(engine, url, backlog, steady)
            for key, value in env.items():
                os.environ[key] = value
            try:
                theirs = run_peer(env, peer_backlog, steady)
            finally:
                for key in env:
                    os.environ.pop(key, None)
        rows.append((name, ours, theirs))
        print(f"{name}: done", file=sys.stderr, flush=True)

    print(
        f"\nafter-commit subscriber catching up on {backlog} (tidings) / {peer_backlog} "
        f"(eventsourcing) events; latency at {RATE}/s x {steady} events\n"
        "events/s: with a trivial effect (one row / one new aggregate per event) committed with "
        "the position, tidings' written by a per-event ORM handler (orm) or a batch handler "
        "(batch); bare: position only\n"
    )
    header = (
        f"{'store':<9} {'':<14} {'orm/s':>8} {'ratio':>6} {'batch/s':>8} {'ratio':>6} "
        f"{'bare/s':>8} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} {'rate/s':>7}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for name, ours, theirs in rows:
        ratio = ours.throughput / theirs.throughput
        batch_ratio = ours.batch_throughput / theirs.throughput
        bare_ratio = ours.bare_throughput / theirs.bare_throughput
        for label, result in (("tidings", ours), ("eventsourcing", theirs)):
            mine = label == "tidings"
            batch = f"{result.batch_throughput:>8.0f}" if mine else f"{'-':>8}"
            print(
                f"{name:<9} {label:<14} {result.throughput:>8.0f} "
                f"{f'{ratio:.1f}x' if mine else '':>6} {batch} "
                f"{f'{batch_ratio:.1f}x' if mine else '':>6} {result.bare_throughput:>8.0f} "
                f"{f'{bare_ratio:.1f}x' if mine else '':>6} "
                f"{result.p50_ms:>8.2f} {result.p99_ms:>8.2f} {result.rate:>7.0f}"
            )
        ok &= batch_ratio >= 10
        if name == "postgres":
            ok &= ours.p99_ms < 20
    print(
        "\nratios: tidings / eventsourcing, with the effect (orm, batch) and bare; the peer "
        "has no batch API\n"
        "targets: throughput (batch handler) >= 10x the peer on each store; postgres p99 < 20 ms: "
        + ("met" if ok else "NOT met")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
