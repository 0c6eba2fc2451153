"""Idempotent consumers: the inbox, and the runner that handles broker messages through it.

Brokers deliver at least once, so a consumer must make a second delivery of the same message
harmless. :class:`InboxConsumer` is the handler you give to ``broker.consume(group, ...)``. For
each delivery it:

1. rebuilds the :class:`~tidings.core.messages.StoredEvent` from the headers and body, verifies
   its signature (if a :class:`~tidings.integration.signing.Verifier` is configured) and decodes
   the event. Anything wrong raises :class:`~tidings.errors.MessageRejected` with the reason:
   the adapter dead-letters the message, no handler sees it, and the worker keeps going;
2. opens a transaction and inserts ``(consumer, message id)`` into the inbox table. If the row is
   already there, this message was handled and committed before: it is acknowledged without
   running the handler;
3. otherwise runs your handler with the session, so its effects commit *in the same
   transaction* as the inbox row;
4. commits; only then does the adapter acknowledge the message.

Adapters may hand it several consecutive messages of one partition at once
(:meth:`InboxConsumer.handle_batch`): they are then handled in one transaction, one commit for
all, which is what makes acknowledging after commit affordable at high rates. If anything in a
batch fails, nothing of it is committed and the adapter handles the messages one by one. A
handler that can apply several envelopes at once (one multi-row statement instead of one round
trip per message) may also provide ``handle_many(envelopes, session)``
(:class:`BatchEnvelopeHandler`): batches then call it once with the messages not handled
before, in delivery order, inside the same transaction. Adapters' group commits call
:meth:`InboxConsumer.prepare_batch` with a batch that has to wait for an earlier batch's
commit, so that decoding it overlaps that transaction (a handler wrapping an ``InboxConsumer``
should pass it on).

If the handler raises, the transaction (inbox row included) rolls back and the broker redelivers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    TextClause,
    bindparam,
    insert,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tidings.brokers.port import Delivery
from tidings.brokers.wire import decode_message
from tidings.core.codec import Codec, default_codec
from tidings.core.envelope import Envelope
from tidings.core.ids import uuid_text
from tidings.core.messages import StoredEvent, to_envelope
from tidings.errors import CodecError, ConfigurationError, MessageRejected

if TYPE_CHECKING:
    from tidings.integration.protection import Protector
    from tidings.integration.signing import Verifier

log = logging.getLogger("tidings.brokers.inbox")

#: Tables of the inbox; create them with ``inbox_metadata.create_all`` or your migrations.
inbox_metadata = MetaData()

inbox_table = Table(
    "tidings_inbox",
    inbox_metadata,
    Column("consumer", String(200), primary_key=True),
    Column("message_id", String(64), primary_key=True),
    Column("event_type", String(200), nullable=False),
    Column("handled_at", DateTime(timezone=True), nullable=False),
)

#: Your code: receives the decoded envelope and the open session; its writes commit with the
#: inbox record.
EnvelopeHandler = Callable[[Envelope[Any], AsyncSession], Awaitable[None]]


@runtime_checkable
class BatchEnvelopeHandler(Protocol):
    """An :data:`EnvelopeHandler` that can also apply several envelopes in one go.

    ``handle_many`` gets the batch's new messages (duplicates already dropped), in delivery
    order, and the open session; it must have the same effects as calling the handler for each
    of them in turn. Raising rolls the whole batch back (the adapter then goes one by one).
    """

    async def __call__(self, envelope: Envelope[Any], session: AsyncSession) -> None: ...

    async def handle_many(
        self, envelopes: Sequence[Envelope[Any]], session: AsyncSession
    ) -> None: ...


def _insert_new(dialect: str) -> Any:
    """``INSERT .. ON CONFLICT DO NOTHING RETURNING message_id``, built once per dialect.

    Executed with a list of rows it is one statement (SQLAlchemy's "insertmanyvalues") whose
    compiled form is cached, rather than a fresh multi-VALUES statement compiled per batch.
    """
    statement = _INSERTS.get(dialect)
    if statement is None:
        module: Any = postgresql if dialect == "postgresql" else sqlite
        statement = (
            module.insert(inbox_table).on_conflict_do_nothing().returning(inbox_table.c.message_id)
        )
        _INSERTS[dialect] = statement
    return statement


_INSERTS: dict[str, Any] = {}


def _batch_statement(sql: str) -> TextClause:
    """A statement over a batch's ``:message_ids`` and ``:event_types`` (array literals)."""
    return text(sql).bindparams(
        bindparam("message_ids", type_=String),
        bindparam("event_types", type_=String),
        bindparam("handled_at", type_=DateTime(timezone=True)),
    )


#: The batch's rows, one per message: what both batch statements insert.
_BATCH_ROWS = (
    "unnest(CAST(:message_ids AS VARCHAR[]), CAST(:event_types AS VARCHAR[]))"
    " AS m(message_id, event_type)"
)
_INSERT_COLUMNS = f"INSERT INTO {inbox_table.name} (consumer, message_id, event_type, handled_at)"

#: A batch's inbox rows on PostgreSQL: the ids and types travel as two arrays, so the statement
#: text is the same for every batch size. Its parsing is then cached by the driver (and the
#: statement prepared by the server), where a multi-row VALUES list with a placeholder per field
#: is new text for each size, converted again for every batch (a cost per message). Each array is
#: sent as one literal (:func:`_text_array`) rather than a list, which psycopg would dump element
#: by element in Python (about 1.8 us per element and array, measured alone). The statement
#: returns the ids that were already there (duplicates: usually none) rather than every id it
#: inserted, a row each, which the client read one by one (about half a microsecond per message).
_INSERT_UNNESTED = _batch_statement(
    f"WITH m AS (SELECT * FROM {_BATCH_ROWS}),"
    f" inserted AS ({_INSERT_COLUMNS}"
    " SELECT :consumer, m.message_id, m.event_type, :handled_at FROM m"
    " ON CONFLICT DO NOTHING RETURNING message_id)"
    " SELECT message_id FROM m EXCEPT SELECT message_id FROM inserted"
)


#: The same rows assumed new: a plain ``INSERT``, which PostgreSQL does in about two thirds of
#: the time of the ``ON CONFLICT DO NOTHING`` form (that one checks each row's key before its
#: speculative insertion, then inserts and confirms it: 15-17 against 8.5-10.5 microseconds a row
#: for batches of 250, 2026-12-06). A batch is almost always new; when one is not (a redelivery),
#: the unique key refuses the statement and :meth:`InboxConsumer.handle_batch` goes again with
#: the form that skips what is there.
_INSERT_ALL_NEW = _batch_statement(
    f"{_INSERT_COLUMNS} SELECT :consumer, m.message_id, m.event_type, :handled_at"
    f" FROM {_BATCH_ROWS}"
)


#: Prepared deliveries kept at most; more means batches that never ran (``prepare_batch``).
_PREPARED_LIMIT = 10_000


class _SeenBefore(Exception):
    """A batch assumed new holds a message the inbox has (or that appears twice in it)."""


def _text_array(values: Sequence[str]) -> str:
    """A PostgreSQL array literal of ``values``: each element in double quotes, with the two
    characters that are special inside them (backslash, double quote) escaped, so that commas,
    braces, spaces or the word NULL in a value are only text."""
    return (
        "{"
        + ",".join(
            ['"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values]
        )
        + "}"
    )


class InboxConsumer:
    """A broker handler that makes ``handler`` idempotent (see the module docstring)."""

    def __init__(
        self,
        name: str,
        sessions: async_sessionmaker[AsyncSession] | AsyncEngine,
        handler: EnvelopeHandler,
        *,
        codec: Codec | None = None,
        verifier: Verifier | None = None,
        protector: Protector | None = None,
    ) -> None:
        if not name or len(name) > 200:
            raise ConfigurationError("an inbox consumer needs a name of 1-200 characters")
        self.name = name
        self.sessions = (
            async_sessionmaker(sessions, expire_on_commit=False)
            if isinstance(sessions, AsyncEngine)
            else sessions
        )
        self.handler = handler
        self.codec = codec or default_codec
        self.verifier = verifier
        self.protector = protector
        #: Counters for operators and tests: handled, duplicates.
        self.handled = 0
        self.duplicates = 0
        #: Deliveries decoded by :meth:`prepare_batch`, by id, with the delivery itself (kept alive,
        #: so that its id is not reused meanwhile).
        self._prepared: dict[int, tuple[Delivery, StoredEvent, Envelope[Any]]] = {}

    def prepare_batch(self, deliveries: Sequence[Delivery]) -> None:
        """Decode and verify ``deliveries`` ahead of their transaction (the group commit calls
        this while an earlier batch commits; see :class:`~tidings.brokers.port.PreparingHandler`).
        A delivery that cannot be read is left as it is: its batch reads it again and rejects
        it there, as it would have."""
        prepared = self._prepared
        if len(prepared) >= _PREPARED_LIMIT:
            prepared.clear()  # left by batches that never ran (a consumer stopped meanwhile)
        for delivery in deliveries:
            try:
                stored, envelope = self.read(delivery)
            except Exception:
                continue
            prepared[id(delivery)] = (delivery, stored, envelope)

    def _read_all(self, deliveries: Sequence[Delivery]) -> list[tuple[StoredEvent, Envelope[Any]]]:
        """Each delivery decoded: as prepared, or now."""
        prepared = self._prepared
        if not prepared:
            return [self.read(delivery) for delivery in deliveries]
        try:
            return [self._prepared_or_read(delivery) for delivery in deliveries]
        finally:
            # Whatever happens to this batch, its deliveries are not prepared any more (a
            # delivery keeps its id while it lives, so no other one can be holding it).
            for delivery in deliveries:
                prepared.pop(id(delivery), None)

    def _prepared_or_read(self, delivery: Delivery) -> tuple[StoredEvent, Envelope[Any]]:
        found = self._prepared.get(id(delivery))
        if found is not None and found[0] is delivery:
            return found[1], found[2]
        return self.read(delivery)

    def read(self, delivery: Delivery) -> tuple[StoredEvent, Envelope[Any]]:
        """Decode and verify a delivery; :class:`MessageRejected` says why it is unusable."""
        stored = decode_message(delivery.headers, delivery.body)
        if self.verifier is not None:
            self.verifier.verify(stored)
        try:
            envelope = to_envelope(stored, self.codec)
        except CodecError as exc:
            raise MessageRejected(f"{stored.describe()} cannot be decoded: {exc}") from exc
        if self.protector is not None:
            envelope = self.protector.reveal_envelope(envelope)
        return stored, envelope

    async def __call__(self, delivery: Delivery) -> None:
        ((stored, envelope),) = self._read_all([delivery])
        async with self.sessions() as session, session.begin():
            if not await self._record(session, stored):
                self.duplicates += 1
                log.debug("%s: %s already handled; acknowledging", self.name, stored.describe())
                return
            await self.handler(envelope, session)
        self.handled += 1

    async def handle_batch(self, deliveries: Sequence[Delivery]) -> None:
        """Handle consecutive messages in one transaction (all or nothing; see BatchHandler).

        One commit for the batch instead of one per message: the inbox rows go in with a single
        statement, and the handler runs, in order, for each message not handled before.
        """
        decoded = self._read_all(deliveries)
        try:
            await self._commit_batch(decoded, assume_new=True)
        except _SeenBefore:
            # A redelivery: again, skipping the messages the inbox already has.
            await self._commit_batch(decoded, assume_new=False)

    async def _commit_batch(
        self, decoded: Sequence[tuple[StoredEvent, Envelope[Any]]], *, assume_new: bool
    ) -> None:
        new: list[Envelope[Any]] = []
        async with self.sessions() as session, session.begin():
            ids = [uuid_text(stored.event_id) for stored, _ in decoded]
            messages = [stored for stored, _ in decoded]
            fresh = await self._record_many(session, ids, messages, assume_new=assume_new)
            for message_id, (_, envelope) in zip(ids, decoded, strict=True):
                if message_id in fresh:
                    fresh.discard(message_id)  # the same message twice in one batch
                    new.append(envelope)
            handler = self.handler
            if isinstance(handler, BatchEnvelopeHandler) and len(new) > 1:
                await handler.handle_many(new, session)
            else:
                for envelope in new:
                    await handler(envelope, session)
        self.handled += len(new)
        self.duplicates += len(decoded) - len(new)

    async def _record_many(
        self,
        session: AsyncSession,
        ids: Sequence[str],
        messages: Sequence[StoredEvent],
        *,
        assume_new: bool = False,
    ) -> set[str]:
        """Insert the inbox rows of several messages (``ids`` are their message ids, as text);
        return the ids that were not there before.

        ``assume_new``: on PostgreSQL, insert them all or raise :class:`_SeenBefore` (the
        transaction is then unusable: roll it back)."""
        dialect = session.get_bind().dialect.name
        now = datetime.now(UTC)
        # In id order, so that two transactions inserting overlapping rows (redeliveries racing
        # on two consumers) take the row locks in the same order instead of deadlocking.
        ordered = sorted(zip(ids, (m.event_type for m in messages), strict=True))
        if dialect == "postgresql":
            params = {
                "consumer": self.name,
                "message_ids": _text_array([message_id for message_id, _ in ordered]),
                "event_types": _text_array([event_type for _, event_type in ordered]),
                "handled_at": now,
            }
            if assume_new:
                try:
                    await session.execute(_INSERT_ALL_NEW, params)
                except IntegrityError as exc:
                    # The statement writes the inbox only: its unique key refused a row.
                    raise _SeenBefore from exc
                return set(ids)
            result = await session.execute(_INSERT_UNNESTED, params)
            return set(ids).difference(result.scalars())
        if dialect == "sqlite":
            rows = [
                {
                    "consumer": self.name,
                    "message_id": message_id,
                    "event_type": event_type,
                    "handled_at": now,
                }
                for message_id, event_type in ordered
            ]
            result = await session.execute(_insert_new(dialect), rows)
            return set(result.scalars())
        return {
            message_id
            for message_id, message in zip(ids, messages, strict=True)
            if await self._record(session, message)
        }

    async def _record(self, session: AsyncSession, stored: StoredEvent) -> bool:
        """Insert the inbox row; False if this consumer already handled the message."""
        row = {
            "consumer": self.name,
            "message_id": uuid_text(stored.event_id),
            "event_type": stored.event_type,
            "handled_at": datetime.now(UTC),
        }
        dialect = session.get_bind().dialect.name
        if dialect in ("postgresql", "sqlite"):
            # RETURNING says whether the row went in (rowcount is not reliable with every
            # driver); ON CONFLICT DO NOTHING makes a racing duplicate wait for the first
            # transaction and then insert nothing.
            result = await session.execute(_insert_new(dialect), row)
            return result.first() is not None
        try:
            async with session.begin_nested():
                await session.execute(insert(inbox_table).values(row))
        except IntegrityError:
            return False
        return True
