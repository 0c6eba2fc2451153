"""The relay publishes translated integration events to a real bus, confirmed, from the outbox.

SQL outbox -> relay -> ``bus.<name>`` forwarder -> RabbitMQ / NATS / Redis -> a consumer that
verifies signatures. Only public events arrive; a policy violation is refused before commit; a
broker outage delays publication without losing or duplicating anything.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tidings import Aggregate, Handlers, event
from tidings.brokers.forwarding import forward_to_bus
from tidings.brokers.port import Topology
from tidings.brokers.publisher import BlockingBusPublisher
from tidings.core.messages import StoredEvent
from tidings.errors import BrokerUnavailable, PublishNotAllowed
from tidings.integration.policy import PolicyGuard, PublishPolicy
from tidings.integration.signing import Keyring, Signer, Verifier
from tidings.integration.translator import Translator, integration_event
from tidings.outbox import tables as outbox_tables
from tidings.outbox.config import RelayConfig
from tidings.outbox.relay import Relay
from tidings.outbox.retry import RetryPolicy, SubscriberPolicy
from tidings.persistence.sqlite import sqlite_engine
from tidings.testing.broker_contract import BrokerFactory

from .conftest import declared_bus, deliver, make_broker, receive


@event(name="forwarding.ParcelPacked")
class ParcelPacked:
    parcel_id: str
    weight_grams: int
    internal_note: str


@event(name="forwarding.ParcelLost")
class ParcelLost:
    parcel_id: str


@integration_event(name="public.parcels.ParcelReady", version=1)
class ParcelReadyV1:
    parcel_id: str


@integration_event(name="public.parcels.ParcelReady", version=2)
class ParcelReadyV2:
    parcel_id: str
    weight_kg: float


@integration_event(name="public.parcels.ParcelLost", version=1)
class ParcelLostV1:
    parcel_id: str


class Parcel(Aggregate):
    def __init__(self, parcel_id: str) -> None:
        self.id = parcel_id

    def pack(self, grams: int) -> None:
        self.record(ParcelPacked(self.id, grams, "fragile, handle with care"))

    def lose(self) -> None:
        self.record(ParcelLost(self.id))


class FlakyPublisher:
    """Wraps a real publisher; the first ``failures`` publishes find the broker away."""

    def __init__(self, inner: BlockingBusPublisher, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0

    def start(self) -> None:
        self.inner.start()

    def publish(self, rows: Sequence[StoredEvent]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise BrokerUnavailable("simulated outage")
        self.inner.publish(rows)


# The in-memory broker too: the publisher runs its own event loop in a thread, the consumer
# another one.
@pytest.fixture(params=["memory", "rabbitmq", "nats", "redis"])
def bus(request: pytest.FixtureRequest, run_id: str) -> Iterator[tuple[BrokerFactory, Topology]]:
    topology = Topology(name=f"fwd-{run_id}", groups=("shipping",), partitions=2)
    with declared_bus(request.param, topology) as factory:
        yield factory, topology


def wiring(
    tmp_path: Path, factory: BrokerFactory, topology: Topology, *, failures: int = 0
) -> tuple[RelayConfig, Keyring, FlakyPublisher]:
    translator = Translator(topology.name)
    translator.add(ParcelPacked, ParcelReadyV1, lambda e: ParcelReadyV1(e.parcel_id))
    translator.add(
        ParcelPacked, ParcelReadyV2, lambda e: ParcelReadyV2(e.parcel_id, e.weight_grams / 1000)
    )
    translator.add(ParcelLost, ParcelLostV1, lambda e: ParcelLostV1(e.parcel_id))
    # ParcelLost is mapped but not allowed: the policy must stop it.
    policy = PublishPolicy().allow("warehouse", topology.name, ParcelReadyV1, ParcelReadyV2)
    keyring = Keyring({"k1": secrets.token_bytes(32)})
    publisher = FlakyPublisher(
        BlockingBusPublisher(
            lambda: make_broker(factory, topology), policy=policy, signer=Signer(keyring)
        ),
        failures,
    )
    handlers = Handlers()
    subscriber = forward_to_bus(handlers, translator, publisher)
    engine = sqlite_engine(tmp_path / "outbox.sqlite")
    outbox_tables.create_tables(engine)
    config = RelayConfig(
        engine,
        handlers,
        extra_participants=[PolicyGuard(policy, [translator])],
        policies={
            subscriber: SubscriberPolicy(
                retry=RetryPolicy(immediate=0, delayed=5, base_delay=0.01, max_delay=0.05)
            )
        },
        listen=False,
    )
    return config, keyring, publisher


def commit(config: RelayConfig, parcel: Parcel, action: str, *args: Any) -> None:
    with config.unit_of_work(producer="warehouse") as uow:
        uow.track(parcel)
        getattr(parcel, action)(*args)
        uow.commit()


def test_translated_events_reach_the_bus_signed_and_only_once(
    bus: tuple[BrokerFactory, Topology], tmp_path: Path
) -> None:
    factory, topology = bus
    config, keyring, publisher = wiring(tmp_path, factory, topology, failures=2)
    relay = Relay(config)
    for n in range(3):
        commit(config, Parcel(f"p-{n}"), "pack", 1500 + n)
    deliver(relay)  # the first two publishes hit an outage and are retried
    assert publisher.calls == 3 + 2

    got = receive(factory, topology, "shipping", 6)
    assert sorted((m.event_type, m.event_version) for m in got) == sorted(
        [("public.parcels.ParcelReady", 1), ("public.parcels.ParcelReady", 2)] * 3
    )
    assert len({m.event_id for m in got}) == 6  # no duplicates
    verifier = Verifier(keyring)
    for message in got:
        verifier.verify(message)  # signed, untampered
        assert b"fragile" not in message.payload  # the domain event's private data stays home
    # Per stream, v1 and v2 of one parcel keep their order relative to the domain event.
    assert {m.stream_id for m in got} == {"Parcel-p-0", "Parcel-p-1", "Parcel-p-2"}


def test_an_event_the_policy_forbids_is_refused_before_commit(
    bus: tuple[BrokerFactory, Topology], tmp_path: Path
) -> None:
    factory, topology = bus
    config, _, _ = wiring(tmp_path, factory, topology)
    parcel = Parcel("p-9")
    with pytest.raises(PublishNotAllowed, match=r"public\.parcels\.ParcelLost"):
        commit(config, parcel, "lose")
    with config.engine.connect() as conn:
        rows = conn.scalar(select(func.count()).select_from(outbox_tables.outbox))
    assert rows == 0  # nothing was written: no row to ever send
    assert len(parcel.pending_events) == 1
