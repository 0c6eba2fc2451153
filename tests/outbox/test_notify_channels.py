"""NOTIFY channels are per schema: services sharing a PostgreSQL database, each with an outbox
of the same name in a schema of its own, wake only their own relays."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, Table, create_engine

from tidings import EventSourcedAggregate, Handlers, Timing, applies, event
from tidings.outbox import (
    OutboxParticipant,
    PostCommitNotifier,
    RelayConfig,
    create_tables,
    listen_channel,
    log_table,
    notify_channel,
    outbox_table,
)
from tidings.outbox.relay import _Listener
from tidings.persistence.sql import SqlUnitOfWork
from tidings.testing.services import POSTGRES_URL

from .app import CountingDoorbell, wait_for

DSN = POSTGRES_URL.replace("postgresql+psycopg", "postgresql")


def on_schema(schema: str) -> Engine:
    return create_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})


@pytest.fixture
def listener() -> Iterator[Any]:
    import psycopg

    connection = psycopg.connect(DSN, autocommit=True)
    try:
        yield connection
    finally:
        connection.close()


def heard(listener: Any, wanted: int = 1) -> set[str]:
    """The channels heard: waits for ``wanted`` notifications, then a while for any more."""
    channels = {n.channel for n in listener.notifies(timeout=10.0, stop_after=wanted)}
    channels |= {n.channel for n in listener.notifies(timeout=0.5)}
    return channels


def channel_seen_from(schema: str, log: Table) -> tuple[str, bool]:
    import psycopg

    with psycopg.connect(DSN, autocommit=True, options=f"-csearch_path={schema}") as conn:
        return listen_channel(conn, log)


@event(name="channels.Chimed")
class Chimed:
    n: int


class Chime(EventSourcedAggregate):
    @applies(Chimed)
    def _chimed(self, event: Chimed) -> None:
        pass


def commit_one(engine: Engine, participant: OutboxParticipant, handlers: Handlers) -> None:
    uow = SqlUnitOfWork(engine, handlers, participants=[participant])
    with uow:
        uow.track(Chime.blank("c-1")).record(Chimed(1))
        uow.commit()


def test_outboxes_of_one_name_in_two_schemas_announce_on_channels_of_their_own(
    pg_engine: Engine, pg_schema: str, other_pg_schema: str, listener: Any
) -> None:
    other = on_schema(other_pg_schema)
    try:
        create_tables(pg_engine)
        create_tables(other)
        ours, found = channel_seen_from(pg_schema, outbox_table)
        assert found
        assert (
            ours == notify_channel(outbox_table, pg_schema) == f"tidings_{pg_schema}.tidings_outbox"
        )
        theirs, found = channel_seen_from(other_pg_schema, outbox_table)
        assert found
        assert theirs == f"tidings_{other_pg_schema}.tidings_outbox"
        listener.execute(f'LISTEN "{ours}"')
        listener.execute(f'LISTEN "{theirs}"')
        handlers = Handlers()
        handlers.add(Chimed, lambda event: None, when=Timing.AFTER_COMMIT, name="sink")

        # After the commit, from the engine's notifier thread: only our schema's channel.
        commit_one(pg_engine, OutboxParticipant.for_engine(pg_engine, handlers), handlers)
        assert heard(listener) == {ours}
        # Inside the writing transaction (notify=True): only theirs.
        commit_one(other, OutboxParticipant(handlers, notify=True), handlers)
        assert heard(listener) == {theirs}
    finally:
        other.dispose()


def test_a_name_too_long_for_a_channel_is_hashed_alike_here_and_on_the_server(
    pg_engine: Engine, pg_schema: str, listener: Any
) -> None:
    name = 'Outbox "Quoted" ' + "l" * 24  # with the schema, more than a channel's 63 bytes
    table = Table(name, MetaData(), Column("id", Integer, primary_key=True))
    table.create(pg_engine)
    channel, found = channel_seen_from(pg_schema, table)
    assert found
    assert channel == notify_channel(table, pg_schema)
    assert channel.startswith("tidings_") and len(channel) == len("tidings_") + 32
    listener.execute(f'LISTEN "{channel}"')
    PostCommitNotifier(pg_engine).notify_log(table)
    assert heard(listener) == {channel}


def test_a_log_named_with_its_schema_needs_no_lookup(pg_schema: str) -> None:
    table = Table("tidings_outbox", MetaData(), Column("id", Integer), schema=pg_schema)
    # No connection is asked: the channel is the log's own schema's.
    assert listen_channel(None, table) == (f"tidings_{pg_schema}.tidings_outbox", True)
    assert notify_channel(table, "ignored") == f"tidings_{pg_schema}.tidings_outbox"


def test_a_log_not_created_yet_is_announced_on_the_table_name_alone(
    pg_schema: str, listener: Any
) -> None:
    table = log_table("tidings_not_yet", MetaData())
    assert channel_seen_from(pg_schema, table) == ("tidings_tidings_not_yet", False)
    assert notify_channel(table) == "tidings_tidings_not_yet"


def test_a_relay_listening_before_its_log_exists_hears_writers_once_it_does(
    pg_engine: Engine,
) -> None:
    doorbell = CountingDoorbell()
    log = log_table("tidings_late_outbox", MetaData())
    config = RelayConfig(pg_engine, Handlers(), log=log, doorbell=doorbell)
    stop = threading.Event()
    listening = _Listener(config, stop)
    listening.start()
    try:
        wait_for(lambda: doorbell.rings >= 1, "rung")  # connected: it rings once for what it missed
        log.create(pg_engine)
        # Within its next wait for notifications, it sees the log and listens on its schema's
        # channel (and rings, for what was written before).
        wait_for(lambda: doorbell.rings >= 2)
        rung = doorbell.rings
        PostCommitNotifier(pg_engine).notify_log(log)
        wait_for(lambda: doorbell.rings > rung)
    finally:
        stop.set()
        listening.join(10)
    assert not listening.is_alive()
