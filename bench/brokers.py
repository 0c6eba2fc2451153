"""Broker benchmark: tidings' adapters with full guarantees beside each raw client's ceiling.

For each broker (RabbitMQ, NATS JetStream, Redis Streams), in the same run:

* **raw ceiling**: the driver used directly, the plain way: a batch published with the client's
  own acknowledgement (aio-pika publisher confirms, JetStream PubAck, the XADD reply), consumed
  concurrently with an acknowledgement per message and no work, one queue / consumer / stream;
  run before and after the paths below, and the faster of the two runs is the ceiling (this
  host's speed comes and goes, and one slow raw run would flatter every share);
* **outbox->broker->consumer** (the issue's measure and the target): domain events committed by
  units of work into the outbox on PostgreSQL (100 per transaction for throughput, 10 every
  10 ms for latency), the relay (:class:`~tidings.outbox.Relay` with
  :func:`~tidings.brokers.forwarding.forward_to_bus` and a ``BlockingBusPublisher``) translating
  and publishing them with confirms, and an :class:`InboxConsumer` on PostgreSQL consuming them:
  the inbox rows (deduplication) and one effect row per event commit in one transaction per
  batch of whatever was fetched, and only then are the messages acknowledged;
* **outbox, process per stage**: the same path with units of work, relay and consumer each in a
  process of its own, as deployed at scale;
* **outbox drain, process each**: the path from the outbox on, as the raw ceiling is measured
  from its first publish on: the units of work fill the outbox first (no relay running), then
  the relay process (connected, as one that has been up a while) starts following it, and the
  clock runs until the consumer process has committed the last event. Same guarantees; what it
  leaves out is the writers' own work on the same cores, which the raw client has no
  counterpart of;
* **raw, consumer process**: the raw client with its consumer in a process of its own (this
  process publishes), the layout of the process-per-stage run: the ceiling that run and the
  drain are compared with like for like (a raw client in one process is bound by its one
  interpreter, not by the host: on Redis, a consumer process of its own took it 1.4-1.75x
  faster on 2026-12-07). The like-for-like line also gives the most the drivers' floor could
  reach against it on this host (all cores, below);
* **adapter publish->consumer** (the earlier measure): the same events published straight
  through the adapter (``publish()`` returns once every message is confirmed), the same consumer;
* **drivers' floor** (``_floor.py``): the outbox path's guarantees written straight on psycopg
  and the raw client, in the cheapest form each offers (log append, relay page, confirmed
  publish, inbox and effect rows committed before the ack; no headers, no partitions, no gap
  safety): the least any library giving them could cost in one Python process. Its share of
  the raw ceiling is what the guarantees alone leave of the target's 60%.

Both use 8 partitions (per-stream order kept) and 64 streams; consumers fetch up to 256 messages
per partition and read, as each raw client fetches 256 per read (the library's default
``Topology.prefetch`` is 64: a throughput-minded deployment raises it). Throughput is events/s
from the first commit (or publish) to the last handled event, over 20,000 events (1,000 with
--quick).
Every process of the run, this one (raw clients and floor included) and the process-per-stage
run's relay and consumer, has its garbage collector tuned as ``tidings relay`` and ``tidings
worker`` tune theirs (:func:`tidings.interpreter.tune_collector`); ``--default-gc`` leaves
CPython's defaults everywhere, to compare. Latency is measured at a steady 1,000 events/s: from just
before the commit (or ``publish()``) to the end of the consumer's commit, p50 and p99.
Target: outbox->broker->consumer >= 60% of the raw ceiling (each outbox row says whether it
met it against the raw client in one process; the like-for-like line, whether the
process-per-stage and drain runs met it against the raw client with a consumer process).

    python bench/brokers.py [--quick] [--only rabbitmq nats redis] [--default-gc]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import _floor
import _raw
from _clock import CORES, Lap, Stopwatch, host_bound, process_cpu, stat_cpu, wait_for
from _services import require
from tidings import Aggregate, Envelope, Handlers, event
from tidings.brokers.forwarding import forward_to_bus
from tidings.brokers.inbox import InboxConsumer, inbox_metadata
from tidings.brokers.port import Broker, Delivery, Topology
from tidings.brokers.publisher import BlockingBusPublisher
from tidings.core.codec import Codec
from tidings.core.registry import EventRegistry
from tidings.integration.translator import Translator, integration_event
from tidings.interpreter import tune_collector
from tidings.outbox import Relay, RelayConfig, create_tables
from tidings.outbox import metadata as outbox_metadata
from tidings.testing.broker_contract import probe
from tidings.testing.services import NATS_URL, POSTGRES_URL, RABBITMQ_URL, REDIS_URL

PARTITIONS = 8
#: Messages a consumer fetches per partition and read: what each raw client fetches per read
#: (RabbitMQ's prefetch count, a NATS fetch, a Redis XREADGROUP), not the library's default (64).
PREFETCH = _raw.FETCH
TARGET = 0.6
BATCH = _raw.BATCH  # events per unit of work: what the raw clients publish per confirmation
RATE = 1000  # events/s for the latency run
TICK = 0.01  # one batch of RATE * TICK events per tick

effects_metadata = MetaData()
effects = Table(
    "bench_broker_effects",
    effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("stream", String(64), nullable=False),
    Column("n", Integer, nullable=False),
)

#: Built once: a statement object reused with parameters skips SQLAlchemy's per-call building.
INSERT_EFFECT = insert(effects)
#: A batch's effects in one statement with one array per column: psycopg's executemany costs
#: about 35 microseconds of CPU per row, these arrays a few.
INSERT_EFFECTS = text(
    "INSERT INTO bench_broker_effects (stream, n)"
    " SELECT * FROM unnest(CAST(:streams AS VARCHAR[]), CAST(:ns AS INTEGER[]))"
)


@event(name="bench.brokers.Counted")
class Counted:
    """The domain event the writers commit (into the outbox)."""

    stream: str
    n: int


@integration_event(name="bench.brokers.Ticked", version=1)
class TickedV1:
    """What the bus carries: the public form of ``Counted``."""

    stream: str
    n: int


class Counter(Aggregate):
    def __init__(self, counter_id: str) -> None:
        self.id = counter_id

    def count(self) -> None:
        self.record(Counted(self.id, self.version + 1))


@dataclass
class Throughput:
    rate: float
    #: CPU time of this process (every thread: writers, relay, clients, consumer) per event,
    #: in seconds. The databases' and brokers' own CPU is not in it.
    cpu: float
    #: CPU time of the whole host per event (PostgreSQL, the broker, the kernel and this
    #: process), in seconds; ``None`` where it cannot be read (see ``_clock.py``).
    host: float | None = None
    #: The same as ``cpu``, by stage (the thread it runs on; see :func:`stage_cpu`), where measured.
    stages: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, lap: Lap, stages: dict[str, float] | None = None) -> Throughput:
        return cls(lap.rate, lap.cpu, lap.host, stages or {})


#: The stage each thread of the outbox path works for, by the start of its name.
STAGES = (
    ("asyncio_", "writers"),  # the units of work, run by asyncio.to_thread
    ("tidings-bus-publisher", "publisher"),  # the broker client of the relay's forwarder
    ("relay-", "relay"),  # the delivery thread (its -upkeep thread is listed apart)
    ("MainThread", "consumer"),  # the event loop: consumer, its client and this script
)


def _stage(thread_name: str) -> str:
    if thread_name.endswith("-upkeep"):
        return "other"
    return next((stage for prefix, stage in STAGES if thread_name.startswith(prefix)), "other")


def stage_cpu() -> dict[str, float]:
    """CPU seconds used so far by each live thread of this process, summed by stage.

    Read from ``/proc/self/task`` (Linux); empty elsewhere. A thread that ended between two
    readings is missing from the difference, so take both while the stages are running.
    """
    used: dict[str, float] = {}
    for thread in threading.enumerate():
        seconds = stat_cpu(f"/proc/self/task/{thread.native_id}/stat")
        if seconds is None:
            continue
        stage = _stage(thread.name)
        used[stage] = used.get(stage, 0.0) + seconds
    return used


def per_event(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    return {stage: (after[stage] - before.get(stage, 0.0)) / count for stage in after}


@dataclass
class Measure:
    throughput: Throughput
    p50_ms: float
    p99_ms: float


@dataclass
class Result:
    broker: str
    raw: Throughput
    floor: Throughput
    outbox: Measure
    #: The same path, writers, relay and consumer each in a process of its own.
    split: Measure
    #: A filled outbox delivered by relay and consumer processes (no writers meanwhile).
    drain: Throughput
    adapter: Measure
    #: Both raw runs' rates (before and after the others); ``raw`` is the faster one.
    raw_rates: tuple[float, float]
    #: The raw client with its consumer in a process of its own (like for like with ``split``).
    raw_split: Throughput


def measure(throughput: Throughput, latencies: list[float]) -> Measure:
    quantiles = statistics.quantiles(latencies, n=100)
    return Measure(throughput, statistics.median(latencies), quantiles[98])


# -- tidings -------------------------------------------------------------------------------------


def make_broker(kind: str, topology: Topology) -> Any:
    if kind == "rabbitmq":
        from tidings.brokers.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(RABBITMQ_URL, topology)
    if kind == "nats":
        from tidings.brokers.nats import NatsBroker

        return NatsBroker(NATS_URL, topology)
    from tidings.brokers.redis import RedisBroker

    return RedisBroker(REDIS_URL, topology)


class Probe:
    """The consumer's business logic: one effect row per event, committed with the inbox rows.

    ``handle_many`` is the batch form the inbox uses for a batch's new messages: the same rows,
    in one statement (one round trip, one array per column) instead of one per event.
    """

    async def __call__(self, envelope: Envelope[Any], session: AsyncSession) -> None:
        event = envelope.event
        await session.execute(INSERT_EFFECT, {"stream": event.stream, "n": event.n})

    async def handle_many(self, envelopes: Sequence[Envelope[Any]], session: AsyncSession) -> None:
        events = [envelope.event for envelope in envelopes]
        await session.execute(
            INSERT_EFFECTS, {"streams": [e.stream for e in events], "ns": [e.n for e in events]}
        )


class Committed:
    """The runner, noting when each message's transaction committed (for latency)."""

    def __init__(self, runner: InboxConsumer) -> None:
        self.runner = runner
        self.at: dict[tuple[str, int], float] = {}

    def _mark(self, deliveries: Sequence[Delivery]) -> None:
        now = time.perf_counter()
        for delivery in deliveries:
            stream = delivery.headers.get("tidings-stream-id", "")
            version = int(delivery.headers.get("tidings-stream-version", "0"))
            self.at.setdefault((stream, version), now)

    async def __call__(self, delivery: Delivery) -> None:
        await self.runner(delivery)
        self._mark([delivery])

    async def handle_batch(self, deliveries: Sequence[Delivery]) -> None:
        await self.runner.handle_batch(deliveries)
        self._mark(deliveries)

    def prepare_batch(self, deliveries: Sequence[Delivery]) -> None:
        self.runner.prepare_batch(deliveries)


Sent = dict[tuple[str, int], float]


def bench_topology() -> Topology:
    """A new bus: 8 partitions, consumers fetching as many per read as the raw clients do."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    return Topology(name=name, groups=("g",), partitions=PARTITIONS, prefetch=PREFETCH)


def fresh_tables(sync_engine: Engine) -> None:
    """Empty the outbox's, the inbox's and the effects' tables, as the floor's are before its
    run: every path starts from the same database state. ``TRUNCATE``, not ``DELETE``: deleted
    rows would stay behind as dead tuples for the next run's reads to skip and for autovacuum to
    clean up on the same cores while it is measured."""
    tables = [*outbox_metadata.sorted_tables, *inbox_metadata.sorted_tables]
    tables += effects_metadata.sorted_tables
    with sync_engine.begin() as connection:
        names = ", ".join(f'"{table.name}"' for table in tables)
        connection.execute(text(f"TRUNCATE {names}"))


async def prepare_outbox(kind: str, sync_engine: Engine) -> Topology:
    """A new topology, declared, and empty tables (a new relay starts from the log's start)."""
    topology = bench_topology()
    fresh_tables(sync_engine)
    declarer: Broker = make_broker(kind, topology)
    await declarer.connect()
    await declarer.declare()
    await declarer.close()
    return topology


async def delete_topology(kind: str, topology: Topology) -> None:
    cleanup = make_broker(kind, topology)
    await cleanup.connect()
    await cleanup.delete()
    await cleanup.close()


def relay_config(
    kind: str, topology: Topology, sync_engine: Engine
) -> tuple[RelayConfig, BlockingBusPublisher]:
    """The outbox side: domain events forwarded, translated, to the bus; the publisher (started
    by the relay's first page) to close after the relay stops.

    One relay process: one partition (partitions let several relays share a log) and pages of
    1,000, each published with one confirmation wait. Writers use the same configuration for
    their units of work; only a relay started on it publishes.
    """
    translator = Translator(topology.name)
    translator.add(Counted, TickedV1, lambda e: TickedV1(e.stream, e.n))
    publisher = BlockingBusPublisher(lambda: make_broker(kind, topology))
    handlers = Handlers()
    forward_to_bus(handlers, translator, publisher)
    config = RelayConfig(sync_engine, handlers, poll_interval=0.05, partitions=1, batch_size=1000)
    return config, publisher


def make_runner(topology: Topology, engine: AsyncEngine) -> Committed:
    """The inbox consumer; it knows the bus's public events (its published language) only."""
    registry = EventRegistry()
    registry.register(TickedV1)
    return Committed(
        InboxConsumer(f"bench-{topology.name}", engine, Probe(), codec=Codec(registry))
    )


class Writers:
    """Units of work committing the benchmark's events into the outbox, from worker threads."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config

    def commit(self, counters: Sequence[Counter], sent: Sent | None) -> None:
        """One transaction: one new event per entry of ``counters`` (a stream may repeat)."""
        with self.config.unit_of_work(producer="bench") as uow:
            for counter in {id(c): c for c in counters}.values():
                uow.track(counter)
            for counter in counters:
                counter.count()
            if sent is not None:
                now = time.perf_counter()
                for counter in counters:
                    sent[(counter.stream_id, counter.version)] = now
            uow.commit()

    async def burst(self, count: int) -> None:
        """``count`` events committed 100 per transaction over 64 streams."""
        streams = [Counter(f"t{i}") for i in range(64)]
        for start in range(0, count, BATCH):
            chosen = [streams[i % 64] for i in range(start, min(start + BATCH, count))]
            await asyncio.to_thread(self.commit, chosen, None)

    async def steady(self, seconds: float) -> Sent:
        """Events at :data:`RATE` per second: 10 streams, one event each, per 10 ms transaction;
        returns when each was sent."""
        per_tick = int(RATE * TICK)
        latency_streams = [Counter(f"l{i}") for i in range(per_tick)]
        sent: Sent = {}
        next_tick = time.perf_counter()
        for _ in range(int(seconds / TICK)):
            await asyncio.to_thread(self.commit, latency_streams, sent)
            next_tick += TICK
            await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
        return sent


async def outbox_run(
    kind: str, engine: AsyncEngine, sync_engine: Engine, count: int, seconds: float
) -> tuple[Throughput, list[float]]:
    """Units of work -> outbox (PostgreSQL) -> relay -> confirmed publish -> inbox consumer."""
    topology = await prepare_outbox(kind, sync_engine)
    config, publisher = relay_config(kind, topology, sync_engine)
    relay = Relay(config)
    relay.prepare()
    relay.start()
    consumer_side: Broker = make_broker(kind, topology)
    await consumer_side.connect()
    committed = make_runner(topology, engine)
    consumer = await consumer_side.consume("g", committed)
    writers = Writers(config)
    try:
        stopwatch, stages = Stopwatch(), stage_cpu()
        await writers.burst(count)
        await wait_for(lambda: committed.runner.handled >= count, f"outbox {kind} consumer")
        rate = Throughput.of(stopwatch.lap(count), per_event(stages, stage_cpu(), count))
        sent = await writers.steady(seconds)
        await wait_for(lambda: all(key in committed.at for key in sent), "outbox latency run")
        return rate, [(committed.at[key] - at) * 1000 for key, at in sent.items()]
    finally:
        relay.stop()
        await consumer.stop()
        await consumer_side.close()
        await asyncio.to_thread(publisher.close)
        await delete_topology(kind, topology)


# -- the outbox path, a process per stage -------------------------------------------------------


def async_engine_for(schema: str) -> AsyncEngine:
    """An engine whose connections work in ``schema`` (the run's own)."""
    options = {"options": f"-c search_path={schema}"}
    return create_async_engine(POSTGRES_URL, pool_size=PARTITIONS + 4, connect_args=options)


def sync_engine_for(schema: str) -> Engine:
    options = {"options": f"-c search_path={schema}"}
    return create_engine(POSTGRES_URL, connect_args=options, pool_size=8)


def relay_process(
    kind: str, topology: Topology, schema: str, tune: bool, ready: Any, go: Any, stop: Any
) -> None:
    """A relay process, as deployed (``tidings relay``): once ``go`` is set, follows the outbox
    and publishes until ``stop`` is set."""
    sync_engine = sync_engine_for(schema)
    config, publisher = relay_config(kind, topology, sync_engine)
    relay = Relay(config)
    relay.prepare()
    # Connected (and the topology declared) before the clock runs, as in a relay that has been
    # up for a while: publishing nothing only connects.
    publisher.start()
    publisher.publish([])
    if tune:
        tune_collector()
    ready.set()
    go.wait()
    relay.start()
    stop.wait()
    relay.stop()
    publisher.close()
    sync_engine.dispose()


def consumer_process(
    kind: str,
    topology: Topology,
    schema: str,
    tune: bool,
    ready: Any,
    stop: Any,
    handled: Any,
    out: Any,
) -> None:
    """A worker process (``tidings worker``): consumes until ``stop`` is set, publishing its
    handled count in ``handled``; then puts when each message's transaction committed on
    ``out``."""

    async def consume() -> None:
        engine = async_engine_for(schema)
        broker: Broker = make_broker(kind, topology)
        await broker.connect()
        committed = make_runner(topology, engine)
        consumer = await broker.consume("g", committed)
        if tune:
            tune_collector()
        ready.set()
        while not stop.is_set():
            handled.value = committed.runner.handled
            await asyncio.sleep(0.002)
        await consumer.stop()
        await broker.close()
        await engine.dispose()
        out.put(committed.at)

    asyncio.run(consume())


class StageProcesses:
    """A relay process and a consumer process for one topology, as deployed; the writers are
    this process. The relay starts following the outbox when :meth:`go` is called."""

    def __init__(self, kind: str, topology: Topology, schema: str, tune: bool) -> None:
        self.kind = kind
        context = multiprocessing.get_context("spawn")  # no fork of a process with live threads
        self.stop, self.handled, self.out = context.Event(), context.Value("q", 0), context.Queue()
        self.ready = {"relay": context.Event(), "consumer": context.Event()}
        self._go = context.Event()
        self.processes = {
            "relay": context.Process(
                target=relay_process,
                args=(kind, topology, schema, tune, self.ready["relay"], self._go, self.stop),
            ),
            "consumer": context.Process(
                target=consumer_process,
                args=(
                    kind,
                    topology,
                    schema,
                    tune,
                    self.ready["consumer"],
                    self.stop,
                    self.handled,
                    self.out,
                ),
            ),
        }

    async def start(self) -> None:
        for process in self.processes.values():
            process.start()
        for name, ready in self.ready.items():
            await wait_for(ready.is_set, f"{self.kind} {name} process start", limit=60)

    def go(self) -> None:
        self._go.set()

    def used(self) -> dict[str, float]:
        """CPU seconds used so far: the writers (this process), the relay and the consumer."""
        pids = {"writers": os.getpid()} | {n: p.pid or 0 for n, p in self.processes.items()}
        return {name: process_cpu(pid) or 0.0 for name, pid in pids.items()}

    async def wait_handled(self, count: int, what: str) -> None:
        await wait_for(lambda: self.handled.value >= count, what)

    async def committed_at(self) -> dict[tuple[str, int], float]:
        """Stop both; when each message's transaction committed, as the consumer noted it."""
        self.go()
        self.stop.set()
        at: dict[tuple[str, int], float] = await asyncio.to_thread(self.out.get, True, 60)
        return at

    async def close(self) -> None:
        self.go()
        self.stop.set()
        for process in self.processes.values():
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.terminate()


async def outbox_split_run(
    kind: str, sync_engine: Engine, schema: str, count: int, seconds: float, tune: bool
) -> tuple[Throughput, list[float]]:
    """The outbox path with writers, relay and consumer in three processes (as deployed).

    The same work as :func:`outbox_run`; each stage has its own interpreter (no shared GIL),
    so the host's cores, not one process, bound it. Stages are the processes' CPU.
    """
    topology = await prepare_outbox(kind, sync_engine)
    stages = StageProcesses(kind, topology, schema, tune)
    config, _ = relay_config(kind, topology, sync_engine)  # the writers': no relay runs on it
    writers = Writers(config)
    try:
        await stages.start()
        stages.go()
        stopwatch, before = Stopwatch(), stages.used()
        await writers.burst(count)
        await stages.wait_handled(count, f"outbox {kind} consumer process")
        lap, used = stopwatch.lap(count), per_event(before, stages.used(), count)
        rate = Throughput(lap.rate, sum(used.values()), lap.host, used)
        sent = await writers.steady(seconds)
        await stages.wait_handled(count + len(sent), "outbox latency run")
        at = await stages.committed_at()
        # perf_counter is CLOCK_MONOTONIC on Linux: one clock for every process of the host.
        return rate, [(at[key] - sent_at) * 1000 for key, sent_at in sent.items()]
    finally:
        await stages.close()
        await delete_topology(kind, topology)


async def outbox_drain_run(
    kind: str, sync_engine: Engine, schema: str, count: int, tune: bool
) -> Throughput:
    """A filled outbox delivered: relay -> broker -> consumer, a process each.

    The units of work commit ``count`` events into the outbox first, with no relay running;
    then the relay process starts following it, and the clock runs from then until the
    consumer process has committed the last event. The path the raw client's ceiling is
    compared with, from committed rows to committed effects, without the writers' own work
    (which the raw client has no counterpart of) on the same cores.
    """
    topology = await prepare_outbox(kind, sync_engine)
    stages = StageProcesses(kind, topology, schema, tune)
    config, _ = relay_config(kind, topology, sync_engine)
    try:
        await stages.start()
        await Writers(config).burst(count)
        stopwatch, before = Stopwatch(), stages.used()
        stages.go()
        await stages.wait_handled(count, f"outbox {kind} drain")
        lap, used = stopwatch.lap(count), per_event(before, stages.used(), count)
        used.pop("writers")  # this process only waited
        await stages.committed_at()
        return Throughput(lap.rate, sum(used.values()), lap.host, used)
    finally:
        await stages.close()
        await delete_topology(kind, topology)


async def adapter_run(
    kind: str, engine: AsyncEngine, count: int, seconds: float
) -> tuple[Throughput, list[float]]:
    topology = bench_topology()
    publisher: Broker = make_broker(kind, topology)
    consumer_side: Broker = make_broker(kind, topology)
    await publisher.connect()
    await consumer_side.connect()
    await publisher.declare()
    recorder = Probe()
    runner = InboxConsumer(f"bench-{topology.name}", engine, recorder)
    committed = Committed(runner)
    consumer = await consumer_side.consume("g", committed)
    try:
        # Throughput: a burst of `count` events, 64 streams.
        events = [probe(f"t{i % 64}", i // 64) for i in range(count)]
        stopwatch = Stopwatch()
        for start in range(0, count, BATCH):
            await publisher.publish(events[start : start + BATCH])
        await wait_for(lambda: runner.handled >= count, f"tidings {kind} consumer")
        rate = Throughput.of(stopwatch.lap(count))

        # Latency at a steady rate.
        per_tick = int(RATE * TICK)
        sent: dict[tuple[str, int], float] = {}
        ticks = int(seconds / TICK)
        next_tick = time.perf_counter()
        for tick in range(ticks):
            batch = [probe(f"l{i}", tick) for i in range(per_tick)]
            now = time.perf_counter()
            for message in batch:
                sent[(message.stream_id or "", message.stream_version or 0)] = now
            await publisher.publish(batch)
            next_tick += TICK
            await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
        await wait_for(lambda: all(key in committed.at for key in sent), "latency run")
        latencies = [(committed.at[key] - at) * 1000 for key, at in sent.items()]
        return rate, latencies
    finally:
        await consumer.stop()
        await consumer_side.close()
        cleanup = make_broker(kind, topology)
        await cleanup.connect()
        await cleanup.delete()
        await cleanup.close()
        await publisher.close()


async def bench(
    kind: str,
    engine: AsyncEngine,
    sync_engine: Engine,
    schema: str,
    count: int,
    seconds: float,
    tune: bool,
) -> Result:
    first = Throughput.of(await _raw.run(kind, count))
    floor = await floor_run(kind, engine, schema, count)
    outbox = measure(*await outbox_run(kind, engine, sync_engine, count, seconds))
    split = measure(*await outbox_split_run(kind, sync_engine, schema, count, seconds, tune))
    drain = await outbox_drain_run(kind, sync_engine, schema, count, tune)
    fresh_tables(sync_engine)
    adapter = measure(*await adapter_run(kind, engine, count, seconds))
    lap, consumer = await _raw.run_split(kind, count, tune)
    raw_split = Throughput.of(lap, {"publisher": lap.cpu - consumer, "consumer": consumer})
    # The ceiling is the better of a run before and a run after the others: one raw run that
    # met a slow moment of the host (they come and go here) would flatter every share.
    second = Throughput.of(await _raw.run(kind, count))
    ceiling = max(first, second, key=lambda run: run.rate)
    return Result(
        kind, ceiling, floor, outbox, split, drain, adapter, (first.rate, second.rate), raw_split
    )


async def floor_run(kind: str, engine: AsyncEngine, schema: str, count: int) -> Throughput:
    """The drivers' floor (see ``_floor.py``) on empty tables."""
    async with engine.begin() as connection:
        await connection.execute(
            text("TRUNCATE bench_floor_log, bench_floor_cursor, bench_floor_inbox")
        )
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    urls = {"rabbitmq": RABBITMQ_URL, "nats": NATS_URL, "redis": REDIS_URL}
    pipe = await _floor.PIPES[kind](urls[kind])
    return Throughput.of(await _floor.run(pipe, dsn, schema, count))


async def main_async(kinds: list[str], count: int, seconds: float, tune: bool) -> list[Result]:
    schema = f"bench_brokers_{uuid.uuid4().hex[:8]}"
    creator = create_async_engine(POSTGRES_URL)
    async with creator.begin() as connection:
        await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    await creator.dispose()
    engine, sync_engine = async_engine_for(schema), sync_engine_for(schema)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(inbox_metadata.create_all)
            await connection.run_sync(effects_metadata.create_all)
            for statement in _floor.DDL:
                await connection.execute(text(statement))
        create_tables(sync_engine)
        return [
            await bench(kind, engine, sync_engine, schema, count, seconds, tune) for kind in kinds
        ]
    finally:
        sync_engine.dispose()
        async with engine.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()


def redis_parser() -> str:
    """Which reply parser redis-py uses here. The raw Redis client's ceiling depends on it: it
    parses every reply element, and hiredis (C) did that about twice as fast as redis-py's own
    parser on this host (raw 61,000-69,000 against 29,000-31,000 events/s, 2026-12-06), while
    tidings' path (packed read replies, a count per append) ran no faster with it."""
    from redis.utils import HIREDIS_AVAILABLE

    if HIREDIS_AVAILABLE:
        return "redis-py parses replies with hiredis (C)"
    return "redis-py parses replies in Python (hiredis not installed)"


def spent(throughput: Throughput) -> str:
    """CPU per event by stage (or process), in microseconds, in the path's order."""
    return ", ".join(
        f"{stage} {throughput.stages[stage] * 1e6:.0f}"
        for stage in ("writers", "relay", "publisher", "consumer", "other")
        if stage in throughput.stages
    )


def row(throughput: Throughput, raw: Throughput) -> str:
    """Rate, share of raw, CPU per event (process, host) and the all-cores bound's share."""
    bound = host_bound(throughput.host)
    host = "?" if throughput.host is None else f"{throughput.host * 1e6:.0f}"
    cores = "?" if bound is None else f"{bound / raw.rate:.0%}"
    share = "" if throughput is raw else f"{throughput.rate / raw.rate:.0%}"
    return f"{throughput.rate:>9,.0f}{share:>8}{throughput.cpu * 1e6:>11.0f}{host:>12}{cores:>11}"


def verdict(run: Throughput, ceiling: Throughput) -> str:
    """Whether ``run`` reached the target share of ``ceiling``'s rate."""
    return "met" if run.rate / ceiling.rate >= TARGET else "missed"


def like_for_like(r: Result) -> str:
    """The process-per-stage and drain runs against the raw client with a consumer process,
    each with its verdict, and the most the drivers' floor could give against it (all cores)."""
    shares = []
    for path, run in (("process per stage", r.split.throughput), ("outbox drain", r.drain)):
        share = run.rate / r.raw_split.rate
        shares.append(f"{path} {share:.0%} {verdict(run, r.raw_split)}")
    bound = host_bound(r.floor.host)
    floor = "" if bound is None else f"; drivers' floor at most {bound / r.raw_split.rate:.0%}"
    return f"like for like, against it: {', '.join(shares)}{floor}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, shorter latency run")
    parser.add_argument("--only", nargs="*", default=["rabbitmq", "nats", "redis"])
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="leave every process's garbage collector as CPython sets it (no tune_collector)",
    )
    args = parser.parse_args()
    require("postgres", *args.only)
    count, seconds = (1000, 2.0) if args.quick else (20_000, 5.0)
    tune = not args.default_gc
    if tune:
        # Every process of the run, this one (raw clients, floor, one-process paths) included,
        # as `tidings relay` and `tidings worker` run theirs.
        tune_collector()
    results = asyncio.run(main_async(args.only, count, seconds, tune))
    collector = "tuned (tidings.interpreter)" if tune else "CPython's defaults"
    print(
        f"\n{count} events per throughput run; latency at {RATE} events/s for {seconds:g} s;"
        f" garbage collector: {collector}"
    )
    print(
        f"{'broker':<10}{'path':<28}{'ev/s':>9}{'of raw':>8}{'cpu us/ev':>11}{'host us/ev':>12}"
        f"{'all cores':>11}{'p50 ms':>9}{'p99 ms':>9}  target"
    )
    for r in results:
        print(f"{r.broker:<10}{'raw publish->consume':<28}{row(r.raw, r.raw)}")
        before, after = r.raw_rates
        print(f"{'':<12}raw runs before and after the others: {before:,.0f} and {after:,.0f} ev/s")
        if r.broker == "redis":
            print(f"{'':<12}{redis_parser()}")
        print(f"{'':<10}{'drivers floor (guarantees)':<28}{row(r.floor, r.raw)}")
        for path, m, target in [
            ("outbox->broker->consumer", r.outbox, True),
            ("outbox, process per stage", r.split, True),
            ("adapter publish->consumer", r.adapter, False),
        ]:
            met = verdict(m.throughput, r.raw) if target else ""
            print(
                f"{'':<10}{path:<28}{row(m.throughput, r.raw)}"
                f"{m.p50_ms:>9.1f}{m.p99_ms:>9.1f}  {met}"
            )
            if m.throughput.stages:
                by = "process" if m is r.split else "stage"
                print(f"{'':<12}cpu us/ev by {by}: {spent(m.throughput)}")
            if m is r.split:
                path = "outbox drain, process each"
                met = verdict(r.drain, r.raw)
                print(f"{'':<10}{path:<28}{row(r.drain, r.raw)}{'-':>9}{'-':>9}  {met}")
                print(f"{'':<12}cpu us/ev by process: {spent(r.drain)}")
                path = "raw, consumer process"
                print(f"{'':<10}{path:<28}{row(r.raw_split, r.raw)}")
                print(f"{'':<12}cpu us/ev by process: {spent(r.raw_split)}")
                print(f"{'':<12}{like_for_like(r)}")
    print(
        "\ntidings: confirmed publish; inbox rows + effects committed on PostgreSQL (one"
        " transaction\nper fetched batch) before the acks; outbox->broker->consumer adds the"
        " unit of work's\ncommit into the outbox and the relay. raw: the driver alone, acked, no"
        " database (the ceiling: the\nbetter of a run before and a run after the others)."
        f"\nTarget: outbox->broker->consumer >= {TARGET:.0%} of raw (on each outbox row)."
        "\ncpu us/ev: this process's CPU (all its threads) per event in the throughput run;"
        " one Python\nprocess runs writers, relay and consumer, so when it is the bottleneck"
        f" {TARGET:.0%} of raw needs\nits CPU per event within {1 / TARGET:.2g}x the raw"
        " client's. By stage (the threads' own CPU time):\nwriters = units of work committing"
        " into the outbox, relay = reading, decoding and\ntranslating pages, publisher ="
        " the broker client's publishing, consumer = the event loop\n(consuming, the inbox's"
        " transactions, acks and this script).\nhost us/ev: the whole host's CPU per event"
        " (PostgreSQL, the broker, the kernel, this\nprocess). all cores: the most a path could"
        f" reach, as a share of the raw rate above, if its\nwork were spread over all {CORES}"
        " cores (one process per stage, nothing else waiting):\ncores / host us/ev. No process"
        " layout takes a path past it on this host.\nprocess per stage: the outbox path"
        " deployed as it would be at scale, units of work, relay\n(with its publisher) and"
        " consumer each in a process of its own, measured against the same\nraw run (one"
        " process); cpu us/ev is the three processes' CPU together.\noutbox drain: the outbox"
        " filled first, then relay and consumer processes deliver it, timed\nfrom the relay's"
        " start to the last commit (like the raw client, from its first publish)."
        "\nraw, consumer process: the raw client publishing here and consuming in a process of"
        " its own,\nthe ceiling the two runs above are held to like for like (its share is of"
        " the one-process\nraw run); drivers' floor at most: the floor's all-cores bound as a"
        " share of it."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
