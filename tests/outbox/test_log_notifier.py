"""A relay following an event store's events table directly is woken without polling:
by the in-process doorbell, and on PostgreSQL by NOTIFY from another writer."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine

from tidings import EventSourcedAggregate, Handlers, applies, event
from tidings.eventsourcing import EventStoreParticipant, default_schema
from tidings.outbox import Doorbell, LogNotifier, Relay, RelayConfig
from tidings.outbox import create_tables as create_outbox_tables
from tidings.persistence.sql import SqlUnitOfWork

from .app import CountingDoorbell, wait_for


@event(name="lognotifier.Rang")
class Rang:
    n: int


class Bell(EventSourcedAggregate):
    @applies(Rang)
    def _rang(self, event: Rang) -> None:
        pass


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
            wait_for(lambda n=n: n in seen, "woken (it polls every 60 s)", seconds=20)
        # Each commit rang the relay's bell (in-process writer), not a poll that came by.
        assert relay_bell.rings - rings_before >= 3
    finally:
        relay.stop()
    assert seen == [0, 1, 2]


def _after_commit() -> object:
    from tidings import Timing

    return Timing.AFTER_COMMIT


def test_each_commit_notifies_listeners_on_postgres(pg_engine: Engine, pg_schema: str) -> None:
    """The NOTIFY itself, seen by a separate listening connection (as a relay process's is)."""
    import psycopg

    from tidings.outbox import notify_channel
    from tidings.testing.services import POSTGRES_URL

    default_schema.create_all(pg_engine)
    listener = psycopg.connect(POSTGRES_URL.replace("postgresql+psycopg", "postgresql"))
    listener.autocommit = True
    channel = notify_channel(default_schema.events, pg_schema)
    listener.execute(f'LISTEN "{channel}"')
    uow = SqlUnitOfWork(
        pg_engine,
        participants=[EventStoreParticipant(), LogNotifier(pg_engine, default_schema.events)],
    )
    try:
        for n in range(3):
            with uow:
                uow.track(Bell.blank(f"b-{n}")).record(Rang(n))
                uow.commit()
            # Sent after the commit by the notifier thread: each commit is announced.
            received = [note.channel for note in listener.notifies(timeout=5.0, stop_after=1)]
            assert received == [channel]
        with uow:  # a rolled-back transaction notifies nobody
            uow.track(Bell.blank("b-x")).record(Rang(99))
        assert list(listener.notifies(timeout=0.5)) == []
    finally:
        listener.close()


def test_the_outbox_notifies_after_commit_and_survives_a_lost_connection(
    pg_engine: Engine,
    pg_schema: str,
) -> None:
    import psycopg

    from tidings.outbox import OutboxParticipant, notify_channel
    from tidings.outbox import tables as outbox_tables
    from tidings.testing.services import POSTGRES_URL

    create_outbox_tables(pg_engine)
    handlers = Handlers()
    handlers.add(Rang, lambda event: None, when=_after_commit(), name="lognotifier.sink")
    participant = OutboxParticipant.for_engine(pg_engine, handlers)
    uow = SqlUnitOfWork(pg_engine, handlers, participants=[participant])
    dsn = POSTGRES_URL.replace("postgresql+psycopg", "postgresql")
    listener = psycopg.connect(dsn, autocommit=True)
    admin = psycopg.connect(dsn, autocommit=True)
    channel = notify_channel(outbox_tables.outbox, pg_schema)
    listener.execute(f'LISTEN "{channel}"')

    def commit_one(n: int) -> list[str]:
        with uow:
            uow.track(Bell.blank(f"o-{n}")).record(Rang(n))
            uow.commit()
        return [note.channel for note in listener.notifies(timeout=5.0, stop_after=1)]

    try:
        assert commit_one(0) == [channel]
        # Cut the notifier's own connection: the next NOTIFY fails (it is logged, the writer
        # never sees it), and the one after goes out on a new connection.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'SELECT pg_notify%%' AND pid <> pg_backend_pid()"
        )
        received = commit_one(1) + commit_one(2)
        assert channel in received
    finally:
        listener.close()
        admin.close()
