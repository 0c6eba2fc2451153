"""The inbox on PostgreSQL: effects and inbox row in one transaction, duplicates applied once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tidings import Envelope
from tidings.brokers import inbox
from tidings.brokers.inbox import InboxConsumer, inbox_metadata, inbox_table
from tidings.brokers.memory import MemoryBroker, MemoryBrokerServer
from tidings.brokers.port import Delivery, Topology
from tidings.brokers.wire import encode_headers
from tidings.brokers.worker import BrokerSubscription, Worker
from tidings.errors import MessageRejected
from tidings.testing.broker_contract import eventually, probe

pytestmark = pytest.mark.postgres

effects_metadata = MetaData()
effects = Table(
    "inbox_test_effects",
    effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("stream", String(100), nullable=False),
    Column("n", Integer, nullable=False),
)


@pytest.fixture
async def engine(pg_async_engine: AsyncEngine) -> AsyncEngine:
    async with pg_async_engine.begin() as connection:
        await connection.run_sync(inbox_metadata.create_all)
        await connection.run_sync(effects_metadata.create_all)
    return pg_async_engine


async def record(envelope: Envelope[Any], session: AsyncSession) -> None:
    await session.execute(insert(effects).values(stream=envelope.event.stream, n=envelope.event.n))
    await asyncio.sleep(0.01)  # widen the window in which a racing duplicate could slip in


async def count(engine: AsyncEngine, table: Table) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)


async def test_duplicates_racing_on_two_partitions_are_applied_once(engine: AsyncEngine) -> None:
    topology = Topology(name="inbox-race", groups=("g",), partitions=2)
    broker = MemoryBroker(topology, MemoryBrokerServer())
    await broker.connect()
    await broker.declare()
    runner = InboxConsumer("race", engine, record)
    await broker.consume("g", runner)
    messages = [probe(f"s{i}", i) for i in range(20)]
    for message in messages:
        # The same message on both partitions: two handlers run it at the same time.
        for partition in (0, 1):
            await broker.publish_raw(partition, encode_headers(message), message.payload)
    await eventually(lambda: runner.handled + runner.duplicates == 40, "all 40 deliveries settled")
    assert runner.handled == 20
    assert runner.duplicates == 20
    assert await count(engine, effects) == 20
    assert await count(engine, inbox_table) == 20
    await broker.close()


async def test_two_consumers_keep_separate_inbox_records(engine: AsyncEngine) -> None:
    topology = Topology(name="inbox-two", groups=("billing", "shipping"), partitions=1)
    broker = MemoryBroker(topology, MemoryBrokerServer())
    await broker.connect()
    await broker.declare()
    billing = InboxConsumer("billing", engine, record)
    shipping = InboxConsumer("shipping", engine, record)
    await broker.consume("billing", billing)
    await broker.consume("shipping", shipping)
    await broker.publish([probe("order", 1)])
    await eventually(lambda: billing.handled == shipping.handled == 1, "both consumers handled it")
    assert await count(engine, inbox_table) == 2
    await broker.close()


async def test_worker_runs_inbox_consumers_until_stopped(engine: AsyncEngine) -> None:
    server = MemoryBrokerServer()
    topology = Topology(name="inbox-worker", groups=("g",), partitions=4)
    runner = InboxConsumer("worker", engine, record)
    worker = Worker([BrokerSubscription(lambda: MemoryBroker(topology, server), "g", runner)])
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    publisher = MemoryBroker(topology, server)
    await publisher.connect()
    await eventually(lambda: worker.running, "the worker started")
    await publisher.publish([probe(f"w{i % 3}", i) for i in range(30)])
    await eventually(lambda: runner.handled == 30, "the worker handled every message")
    stop.set()
    await running
    assert await count(engine, effects) == 30


async def test_a_batch_records_any_event_type_exactly(engine: AsyncEngine) -> None:
    """A batch's inbox rows go to PostgreSQL as array literals: a type name holding what is
    special in one (commas, braces, quotes, backslashes, spaces, the word NULL) is stored as
    given, and recording the batch again finds every row already there."""
    from dataclasses import replace

    names = ["a,b", "{x}", 'say "hi"', "back\\slash", "two  spaces ", "NULL", "caf\u00e9", ""]
    messages = [replace(probe("s", n), event_type=name) for n, name in enumerate(names)]
    ids = [str(message.event_id) for message in messages]
    runner = InboxConsumer("literal", engine, record)
    async with runner.sessions() as session, session.begin():
        assert await runner._record_many(session, ids, messages) == set(ids)
    async with runner.sessions() as session, session.begin():
        assert await runner._record_many(session, ids, messages) == set()
    async with engine.connect() as connection:
        stored = dict(
            (
                await connection.execute(
                    select(inbox_table.c.message_id, inbox_table.c.event_type).where(
                        inbox_table.c.consumer == "literal"
                    )
                )
            ).all()
        )
    assert stored == dict(zip(ids, names, strict=True))


async def test_a_batch_tells_new_messages_from_those_already_recorded(
    engine: AsyncEngine,
) -> None:
    """The statement reports the ids that were already there; the rest are new, each once,
    even when a batch holds the same message twice or only messages seen before."""
    seen = [probe("seen", n) for n in range(3)]
    new = [probe("new", n) for n in range(4)]
    runner = InboxConsumer("mixed", engine, record)

    def ids(messages: list[Any]) -> list[str]:
        return [str(message.event_id) for message in messages]

    async with runner.sessions() as session, session.begin():
        assert await runner._record_many(session, ids(seen), seen) == set(ids(seen))
    batch = [new[0], seen[1], new[1], new[0], seen[0], new[2], new[3], new[3]]
    async with runner.sessions() as session, session.begin():
        assert await runner._record_many(session, ids(batch), batch) == set(ids(new))
    async with runner.sessions() as session, session.begin():
        assert await runner._record_many(session, ids(batch), batch) == set()
    assert await count(engine, inbox_table) == len(seen) + len(new)


def delivery_of(message: Any, partition: int = 0) -> Delivery:
    return Delivery(message.payload, encode_headers(message), partition, 1)


class Statements:
    """The inbox statements a consumer sends (its plain insert, its insert that skips)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.sent: list[str] = []
        self._engine = engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._note)

    def _note(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith(("INSERT INTO tidings_inbox", "WITH m AS")):
            self.sent.append("skips" if "ON CONFLICT" in statement else "plain")

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._note)


async def test_a_new_batch_goes_in_with_one_plain_insert(engine: AsyncEngine) -> None:
    runner = InboxConsumer("plain", engine, record)
    statements = Statements(engine)
    try:
        await runner.handle_batch([delivery_of(probe("p", n)) for n in range(5)])
    finally:
        statements.close()
    assert statements.sent == ["plain"]
    assert runner.handled == 5
    assert await count(engine, effects) == 5


async def test_a_redelivered_batch_is_handled_again_skipping_what_the_inbox_has(
    engine: AsyncEngine,
) -> None:
    """The plain insert is refused (by the inbox's key) when the batch holds a message handled
    before, or one message twice; the batch then goes again, and only its new messages reach
    the handler, each once."""
    seen = [probe("seen", n) for n in range(3)]
    new = [probe("new", n) for n in range(4)]
    runner = InboxConsumer("redelivered", engine, record)
    await runner.handle_batch([delivery_of(message) for message in seen])
    statements = Statements(engine)
    try:
        batch = [new[0], seen[1], new[1], seen[0], new[2], new[3]]
        await runner.handle_batch([delivery_of(message) for message in batch])
        twice = [probe("twice", 1), probe("twice", 2)]
        await runner.handle_batch([delivery_of(m) for m in (twice[0], twice[1], twice[0])])
    finally:
        statements.close()
    assert statements.sent == ["plain", "skips", "plain", "skips"]
    assert (runner.handled, runner.duplicates) == (3 + 4 + 2, 2 + 1)
    async with engine.connect() as connection:
        stored = (await connection.execute(select(effects.c.stream, effects.c.n))).all()
    assert sorted(stored) == sorted((m.stream_id, m.stream_version) for m in seen + new + twice)
    assert await count(engine, inbox_table) == 3 + 4 + 2


async def test_a_handler_breaking_a_unique_key_of_its_own_fails_the_batch(
    engine: AsyncEngine,
) -> None:
    """Only the inbox statement's refusal means "seen before": a handler's own integrity error
    fails the batch (the adapter then goes one by one), and nothing of it is committed."""

    async def insert_twice(envelope: Envelope[Any], session: AsyncSession) -> None:
        await session.execute(
            insert(inbox_table).values(
                consumer="someone else", message_id="same", event_type="x", handled_at=func.now()
            )
        )

    runner = InboxConsumer("strict", engine, insert_twice)
    with pytest.raises(IntegrityError):
        await runner.handle_batch([delivery_of(probe("u", n)) for n in range(2)])
    assert runner.handled == 0
    assert await count(engine, inbox_table) == 0


async def test_prepared_deliveries_are_read_once_and_then_forgotten(engine: AsyncEngine) -> None:
    runner = InboxConsumer("prepared", engine, record)
    reads: list[Delivery] = []
    read = runner.read

    def counted(delivery: Delivery) -> Any:
        reads.append(delivery)
        return read(delivery)

    runner.read = counted  # type: ignore[method-assign]
    batch = [delivery_of(probe("prep", n)) for n in range(3)]
    runner.prepare_batch(batch)
    assert len(reads) == 3
    await runner.handle_batch(batch)
    assert len(reads) == 3  # prepared: not read again
    assert runner._prepared == {}
    other = [delivery_of(probe("later", n)) for n in range(2)]
    await runner.handle_batch(other)  # not prepared: read now
    assert len(reads) == 5
    assert runner.handled == 5


async def test_a_prepared_batch_with_an_unreadable_message_is_rejected_and_forgotten(
    engine: AsyncEngine,
) -> None:
    """Preparing never raises: the message that cannot be read is read again by its batch,
    which rejects it as it would have; nothing of the batch stays prepared."""
    runner = InboxConsumer("unreadable", engine, record)
    good = delivery_of(probe("ok", 1))
    bad = Delivery(b"{}", {"tidings-event-id": "not a uuid"}, 0, 1)
    runner.prepare_batch([good, bad])
    assert len(runner._prepared) == 1
    with pytest.raises(MessageRejected, match="tidings-event-id"):
        await runner.handle_batch([good, bad])
    assert runner._prepared == {}
    assert await count(engine, inbox_table) == 0


async def test_prepared_deliveries_of_batches_that_never_ran_do_not_pile_up(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox, "_PREPARED_LIMIT", 4)
    runner = InboxConsumer("abandoned", engine, record)
    for n in range(4):
        runner.prepare_batch([delivery_of(probe("gone", n))])  # never handled (a consumer stopping)
    assert len(runner._prepared) == 4
    runner.prepare_batch([delivery_of(probe("gone", 9))])
    assert len(runner._prepared) == 1  # the stale ones were dropped first
