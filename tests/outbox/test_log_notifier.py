"""A relay following an event store's events table directly is woken without polling:
by the in-process doorbell, and on PostgreSQL by NOTIFY from another writer."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from tidings import EventSourcedAggregate, Handlers, applies, event
from tidings.eventsourcing import EventStoreParticipant, default_schema
from tidings.outbox import Doorbell, LogNotifier, Relay, RelayConfig
from tidings.outbox import create_tables as create_outbox_tables
from tidings.persistence.sql import SqlUnitOfWork


@event(name="lognotifier.Rang")
class Rang:
    n: int


class Bell(EventSourcedAggregate):
    @applies(Rang)
    def _rang(self, event: Rang) -> None:
        pass


class CountingDoorbell(Doorbell):
    def __init__(self) -> None:
        super().__init__()
        self.rings = 0

    def ring(self) -> None:
        self.rings += 1
        super().ring()


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the relay was not woken (it polls every 60 s)"
        time.sleep(0.01)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> Engine:
    # On PostgreSQL the relay also polls after its listener connects and rings itself after
    # each delivery, so only the in-process bell is proven here; NOTIFY is proven directly below.
    engine: Engine = request.getfixturevalue(
        "sqlite_sync_engine" if request.param == "sqlite" else "pg_engine"
    )
    default_schema.create_all(engine)
    create_outbox_tables(engine)
    return engine


def test_writers_wake_a_relay_following_the_events_table(engine: Engine) -> None:
    seen: list[int] = []
    handlers = Handlers()
    handlers.add(Rang, lambda e: seen.append(e.n), when=_after_commit(), name="listener")
    on_postgres = engine.dialect.name == "postgresql"
    relay_bell = CountingDoorbell()
    # On PostgreSQL the writer rings a bell of its own: only NOTIFY can reach the relay.
    writer_bell = Doorbell() if on_postgres else relay_bell
    config = RelayConfig(
        engine,
        handlers,
        log=default_schema.events,
        doorbell=relay_bell,
        listen=on_postgres,
        min_poll_interval=60.0,
        poll_interval=60.0,
    )
    relay = Relay(config)
    relay.prepare()
    relay.run_until_idle()
    relay.start()
    try:
        time.sleep(0.3)  # the relay is now asleep on its 60 s poll (and LISTENing)
        rings_before = relay_bell.rings
        uow = SqlUnitOfWork(
            engine,
            handlers,
            participants=[
                EventStoreParticipant(),
                LogNotifier(engine, default_schema.events, writer_bell),
            ],
        )
        for n in range(3):
            with uow:
                bell = uow.track(Bell.blank(f"b-{n}"))
                bell.record(Rang(n))
                uow.commit()
            wait_for(lambda n=n: n in seen)
        # Each commit rang the relay's bell (in-process writer), not a poll that came by.
        assert relay_bell.rings - rings_before >= 3
    finally:
        relay.stop()
    assert seen == [0, 1, 2]


def _after_commit() -> object:
    from tidings import Timing

    return Timing.AFTER_COMMIT


def test_each_commit_notifies_listeners_on_postgres(pg_engine: Engine) -> None:
    """The NOTIFY itself, seen by a separate listening connection (as a relay process's is)."""
    import psycopg

    from tidings.outbox import notify_channel
    from tidings.testing.services import POSTGRES_URL

    default_schema.create_all(pg_engine)
    listener = psycopg.connect(POSTGRES_URL.replace("postgresql+psycopg", "postgresql"))
    listener.autocommit = True
    listener.execute(f'LISTEN "{notify_channel(default_schema.events)}"')
    uow = SqlUnitOfWork(
        pg_engine,
        participants=[EventStoreParticipant(), LogNotifier(pg_engine, default_schema.events)],
    )
    for n in range(3):
        with uow:
            uow.track(Bell.blank(f"b-{n}")).record(Rang(n))
            uow.commit()
    with uow:  # a rolled-back transaction notifies nobody
        uow.track(Bell.blank("b-x")).record(Rang(99))
    received = [note.channel for note in listener.notifies(timeout=2.0, stop_after=4)]
    listener.close()
    assert received == [notify_channel(default_schema.events)] * 3
