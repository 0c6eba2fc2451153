"""The bus forwarder publishes a relay batch in one confirmed call, on the real servers.

SQL outbox -> relay -> ``bus.<name>`` forwarder (a batch handler) -> RabbitMQ / NATS / Redis.
A batch of rows becomes one ``publish`` (every confirmation in flight, one wait); the
subscriber's checkpoint moves only after that call returned; a failure half-way through a batch
(part of it already confirmed) is redelivered event by event without losing anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from tidings import Aggregate, Handlers, event
from tidings.brokers.forwarding import forward_to_bus
from tidings.brokers.port import Topology
from tidings.brokers.publisher import BlockingBusPublisher
from tidings.core.messages import StoredEvent
from tidings.errors import BrokerUnavailable
from tidings.integration.translator import Translator, integration_event
from tidings.outbox import DeadLetters
from tidings.outbox import tables as outbox_tables
from tidings.outbox.config import RelayConfig
from tidings.outbox.relay import Relay
from tidings.outbox.retry import RetryPolicy, SubscriberPolicy
from tidings.persistence.sqlite import sqlite_engine
from tidings.testing.broker_contract import BrokerFactory

from .conftest import declared_bus, deliver, make_broker, receive


@event(name="forwarding_batches.CrateShipped")
class CrateShipped:
    crate_id: str
    seq: int


@integration_event(name="public.crates.CrateShipped", version=1)
class CrateShippedV1:
    crate_id: str
    seq: int


class Crate(Aggregate):
    def __init__(self, crate_id: str) -> None:
        self.id = crate_id

    def ship(self, seq: int) -> None:
        self.record(CrateShipped(self.id, seq))


class Recording:
    """Wraps the real publisher: records each call and the checkpoint around the broker's confirm.

    ``fail_first_after``: the first call publishes (confirmed) only that many rows, then fails as
    a broker connection lost mid-batch would.
    """

    def __init__(
        self, inner: BlockingBusPublisher, engine: Engine, fail_first_after: int | None = None
    ) -> None:
        self.inner = inner
        self.engine = engine
        self.fail_first_after = fail_first_after
        self.calls: list[int] = []
        #: (checkpoint before publishing, checkpoint once the broker confirmed) per call.
        self.checkpoints: list[tuple[int, int]] = []

    def start(self) -> None:
        self.inner.start()

    def publish(self, rows: Sequence[StoredEvent]) -> None:
        self.calls.append(len(rows))
        before = checkpoint(self.engine)
        if self.fail_first_after is not None and len(self.calls) == 1:
            self.inner.publish(rows[: self.fail_first_after])
            raise BrokerUnavailable("connection lost half-way through the batch")
        self.inner.publish(rows)
        self.checkpoints.append((before, checkpoint(self.engine)))


def checkpoint(engine: Engine) -> int:
    cp = outbox_tables.checkpoints
    with engine.connect() as conn:
        return int(
            conn.execute(select(cp.c.position).where(cp.c.subscriber == "bus.crates")).one()[0]
        )


def last_position(engine: Engine) -> int:
    outbox = outbox_tables.outbox
    with engine.connect() as conn:
        return int(conn.execute(select(func.max(outbox.c.position))).scalar_one())


@pytest.fixture(params=["memory", "rabbitmq", "nats", "redis"])
def bus(request: pytest.FixtureRequest, run_id: str) -> Iterator[tuple[BrokerFactory, Topology]]:
    topology = Topology(name=f"fwdb-{run_id}", groups=("yard",), partitions=2)
    with declared_bus(request.param, topology) as factory:
        yield factory, topology


def wiring(
    tmp_path: Path, factory: BrokerFactory, topology: Topology, *, fail_first_after: int | None
) -> tuple[RelayConfig, Recording]:
    translator = Translator(topology.name)
    translator.add(CrateShipped, CrateShippedV1, lambda e: CrateShippedV1(e.crate_id, e.seq))
    engine = sqlite_engine(tmp_path / "outbox.sqlite")
    outbox_tables.create_tables(engine)
    publisher = Recording(
        BlockingBusPublisher(lambda: make_broker(factory, topology)), engine, fail_first_after
    )
    handlers = Handlers()
    subscriber = forward_to_bus(handlers, translator, publisher, name="bus.crates")
    config = RelayConfig(
        engine,
        handlers,
        partitions=1,
        policies={
            subscriber: SubscriberPolicy(
                retry=RetryPolicy(immediate=0, delayed=5, base_delay=0.01, max_delay=0.05)
            )
        },
        listen=False,
    )
    return config, publisher


def ship(config: RelayConfig, count: int) -> None:
    for seq in range(count):
        with config.unit_of_work(producer="yard") as uow:
            crate = uow.track(Crate(f"c-{seq % 3}"))
            crate.ship(seq)
            uow.commit()


def shipped(messages: list[StoredEvent]) -> list[int]:
    """The distinct events received (by event id), as their seqs."""
    seqs = {m.event_id: json.loads(m.payload)["seq"] for m in messages}
    return sorted(seqs.values())


def test_a_batch_is_one_confirmed_publish_and_the_checkpoint_moves_after_it(
    bus: tuple[BrokerFactory, Topology], tmp_path: Path
) -> None:
    factory, topology = bus
    config, publisher = wiring(tmp_path, factory, topology, fail_first_after=None)
    ship(config, 8)
    relay = Relay(config)
    relay.prepare()
    try:
        deliver(relay)
    finally:
        publisher.inner.close()

    assert publisher.calls == [8]  # the whole batch in one call: one wait for 8 confirmations
    # While the broker was confirming, and right after, the checkpoint had not moved...
    assert publisher.checkpoints == [(0, 0)]
    # ...it moved once the call returned, in the relay's transaction, past the whole batch.
    assert checkpoint(config.engine) == last_position(config.engine)
    got = receive(factory, topology, "yard", 8)
    assert len(got) == 8
    assert shipped(got) == list(range(8))


def test_a_failure_mid_batch_is_redelivered_event_by_event_without_loss(
    bus: tuple[BrokerFactory, Topology], tmp_path: Path
) -> None:
    factory, topology = bus
    config, publisher = wiring(tmp_path, factory, topology, fail_first_after=3)
    ship(config, 6)
    relay = Relay(config)
    try:
        deliver(relay)
    finally:
        publisher.inner.close()

    # The batch failed after 3 of its 6 rows were confirmed; the relay then delivered the same
    # batch event by event (one confirmed call each, in one transaction), so the retry policy
    # would apply to whichever event failed. The checkpoint stayed put until all were confirmed.
    assert publisher.calls == [6, 1, 1, 1, 1, 1, 1]
    assert publisher.checkpoints == [(0, 0)] * 6
    assert checkpoint(config.engine) == last_position(config.engine)
    assert DeadLetters(config.engine).find() == []
    got = receive(factory, topology, "yard", 6)
    # Every event arrived; the 3 confirmed before the failure may arrive twice (same event id:
    # consumers' inboxes, and JetStream's duplicate window, drop the copy).
    assert shipped(got) == list(range(6))
    assert len(got) <= 6 + 3
