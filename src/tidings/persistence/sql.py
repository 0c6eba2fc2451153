"""Unit of work over SQLAlchemy 2 (``Session`` and ``AsyncSession``), for SQLite and PostgreSQL.

Aggregates are ordinary SQLAlchemy-mapped classes that also derive from
:class:`tidings.Aggregate`. The unit of work commits every aggregate it tracks *and* every
aggregate present in the session (loaded by any query), so an aggregate changed through a plain
``select()`` still has its events dispatched.

Other parts of tidings (the outbox, the event store) join the transaction as *commit
participants*: on persist they contribute SQL statements that run inside the same transaction.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine, Table, inspect
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.base import Executable

from tidings.core.aggregate import Aggregate
from tidings.core.commit import CommitBatch
from tidings.core.unit_of_work import AsyncUnitOfWork, UnitOfWork, UnitOfWorkBase
from tidings.errors import StoreError, TidingsError
from tidings.persistence.direct import Direct, copy_direct_async, execute_direct

A = TypeVar("A", bound=Aggregate)

Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


class CommitParticipant(Protocol):
    """Contributes statements to a unit of work's transaction (sans-I/O: it only builds them)."""

    def statements(self, batch: CommitBatch) -> Iterable[tuple[Executable | Direct, Params]]:
        """The statements to run; a :class:`~tidings.persistence.direct.Direct` one runs on the
        driver's cursor."""
        ...

    def translate(self, error: DBAPIError) -> TidingsError | None:
        """Turn a driver error caused by one of its statements into a tidings error, or None."""
        ...


# A participant may also define ``after_commit(batch) -> None``: it is called after the
# transaction committed successfully (for example to wake a relay in the same process). It is
# optional, looked up with getattr, so participants written before it existed keep working. An
# exception it raises propagates, but the transaction is already durable.


def _notify_committed(participants: Sequence[CommitParticipant], batch: CommitBatch) -> None:
    for participant in participants:
        hook = getattr(participant, "after_commit", None)
        if hook is not None:
            hook(batch)


def _session_aggregates(session: Session, tracked: Iterable[Aggregate]) -> list[Aggregate]:
    found = list(tracked)
    for obj in (*session.new, *session.identity_map.values()):
        if isinstance(obj, Aggregate) and not any(a is obj for a in found):
            found.append(obj)
    return found


def _translate(error: SQLAlchemyError, participants: Sequence[CommitParticipant]) -> Exception:
    if isinstance(error, DBAPIError):
        for participant in participants:
            translated = participant.translate(error)
            if translated is not None:
                return translated
    return StoreError(f"database error during commit: {error}")


class _SqlCommon:
    participants: list[CommitParticipant]

    def _all_statements(self, batch: CommitBatch) -> list[tuple[Executable | Direct, Params]]:
        return [stmt for participant in self.participants for stmt in participant.statements(batch)]


class SqlUnitOfWork(UnitOfWork, _SqlCommon):
    """Synchronous unit of work on one SQLAlchemy ``Connection``, with an ORM ``Session`` on it
    when one is needed.

    The transaction lives on a connection checked out lazily, on first use. The ORM
    :attr:`session` is created only when something asks for it (``get``, ``add`` of a mapped
    aggregate, a handler using ``uow.session``) and is bound to that same connection, so ORM
    changes, participants' statements (outbox rows, events) and direct reads all commit in one
    transaction. A unit of work that never touches the ORM (event-sourced aggregates, outbox
    rows) skips the ``Session`` entirely: its setup, flush and commit bookkeeping cost more than
    the statements themselves.

    Given a ``sessionmaker`` without a single ``bind`` (several engines), the unit of work falls
    back to a plain session and :attr:`connection` is the session's connection.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session] | Engine,
        handlers: Any = None,
        *,
        participants: Sequence[CommitParticipant] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(handlers, **kwargs)
        if isinstance(sessions, Engine):
            self._engine: Engine | None = sessions
            self._sessions = _sessions_for(sessions)
        else:
            bind = sessions.kw.get("bind")
            self._engine = (
                bind if isinstance(bind, Engine) and not sessions.kw.get("binds") else None
            )
            self._sessions = sessions
        self.participants = list(participants)
        self._connection: Connection | None = None
        self._session: Session | None = None

    @property
    def engine(self) -> Engine | None:
        """The engine transactions run on (None for a multi-engine ``sessionmaker``)."""
        return self._engine

    @property
    def connection(self) -> Connection:
        """This unit of work's connection. Its transaction begins with the first statement
        (not here: on SQLite that takes the write lock, which should be held briefly)."""
        self._require_active()
        if self._connection is None:
            if self._engine is None:
                self._connection = self.session.connection()
            else:
                self._connection = self._engine.connect()
        return self._connection

    def connection_for(self, table: Table) -> Connection:
        """The connection that reaches ``table``: :attr:`connection`, or with several engines
        the session's connection to the engine bound to ``table``."""
        if self._engine is None:
            self._require_active()
            return self.session.connection(bind_arguments={"clause": table})
        return self.connection

    @property
    def session(self) -> Session:
        """The ORM session of this unit of work (created on first use, on its connection)."""
        self._require_active()
        if self._session is None:
            if self._engine is None:
                self._session = self._sessions()
            else:
                # Joined to the connection's transaction and in charge of it: commit() and
                # rollback() of the session end that transaction.
                self._session = self._sessions(
                    bind=self.connection, join_transaction_mode="control_fully"
                )
        return self._session

    def get(self, cls: type[A], id: Any) -> A | None:
        """Load an aggregate by primary key and track it."""
        self._require_active()
        found = self.session.get(cls, id)
        return self.track(found) if found is not None else None

    def add(self, aggregate: A) -> A:
        """Track ``aggregate``; a mapped one is added to the session too (inserted on commit)."""
        self._require_active()
        if _is_mapped(aggregate):
            self.session.add(aggregate)
        return self.track(aggregate)

    def aggregates(self) -> list[Aggregate]:
        tracked = UnitOfWorkBase.aggregates(self)
        if self._session is None:
            return list(tracked)
        return _session_aggregates(self._session, tracked)

    def _begin(self) -> None:
        self._connection = None
        self._session = None

    def _persist(self, batch: CommitBatch) -> None:
        try:
            if self._session is not None:
                self._session.flush()
            statements = self._all_statements(batch)
            if statements and self._engine is None:
                # Several engines: the session picks each statement's bind by its table.
                for statement, params in statements:
                    if isinstance(statement, Direct):
                        statement = statement.statement
                    self.session.execute(statement, params)
            elif statements:
                connection = self.connection
                # A unit of work whose whole transaction is one direct statement with one row
                # (an aggregate's one new event, say) runs it as a transaction of its own: on
                # PostgreSQL that saves the BEGIN and COMMIT round trips (execute_direct keeps
                # several rows in a transaction). Reads before it ran outside any transaction
                # too (the event store's loads; appends are checked by constraints, not locks).
                alone = len(statements) == 1 and self._session is None
                for statement, params in statements:
                    if isinstance(statement, Direct):
                        execute_direct(
                            connection, statement.statement, params, fetch=False, autocommit=alone
                        )
                    else:
                        connection.execute(statement, params)
        except SQLAlchemyError as exc:
            raise _translate(exc, self.participants) from exc

    def _commit_transaction(self) -> None:
        try:
            if self._session is not None:
                self._session.commit()
            # A session joins the connection's transaction only once it runs something; one
            # created but never used commits nothing, so the connection commits itself.
            if self._connection is not None and self._connection.in_transaction():
                self._connection.commit()
        except SQLAlchemyError as exc:
            raise _translate(exc, self.participants) from exc

    def _rollback(self) -> None:
        if self._session is not None:
            self._session.rollback()
        if self._connection is not None and self._connection.in_transaction():
            self._connection.rollback()

    def _after_commit(self, batch: CommitBatch) -> None:
        _notify_committed(self.participants, batch)

    def _end(self) -> None:
        session, connection = self._session, self._connection
        self._session = self._connection = None
        try:
            if session is not None:
                session.close()
        finally:
            if connection is not None and self._engine is not None:
                connection.close()


_sessionmakers: weakref.WeakKeyDictionary[Engine, sessionmaker[Session]] = (
    weakref.WeakKeyDictionary()
)


def _sessions_for(engine: Engine) -> sessionmaker[Session]:
    """One ``sessionmaker`` per engine, shared by its units of work.

    Each ``sessionmaker`` defines a new ``Session`` subclass, and SQLAlchemy builds a class's
    event dispatch on its first instance: a ``sessionmaker`` per unit of work cost 0.4 to 1 ms
    of CPU per ORM commit (a quarter to a third of a one-row ORM unit of work on PostgreSQL).
    """
    found = _sessionmakers.get(engine)
    if found is None:
        found = _sessionmakers[engine] = sessionmaker(engine, expire_on_commit=False)
    return found


def _is_mapped(instance: object) -> bool:
    return inspect(instance, raiseerr=False) is not None


class AsyncSqlUnitOfWork(AsyncUnitOfWork, _SqlCommon):
    """asyncio unit of work on a SQLAlchemy ``AsyncSession``."""

    session: AsyncSession

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession] | AsyncEngine,
        handlers: Any = None,
        *,
        participants: Sequence[CommitParticipant] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(handlers, **kwargs)
        self._sessions = (
            async_sessionmaker(sessions, expire_on_commit=False)
            if isinstance(sessions, AsyncEngine)
            else sessions
        )
        self.participants = list(participants)

    async def get(self, cls: type[A], id: Any) -> A | None:
        self._require_active()
        found = await self.session.get(cls, id)
        return self.track(found) if found is not None else None

    def add(self, aggregate: A) -> A:
        self._require_active()
        self.session.add(aggregate)
        return self.track(aggregate)

    def aggregates(self) -> list[Aggregate]:
        return _session_aggregates(self.session.sync_session, UnitOfWorkBase.aggregates(self))

    async def _begin(self) -> None:
        self.session = self._sessions()

    async def _persist(self, batch: CommitBatch) -> None:
        try:
            await self.session.flush()
            for statement, params in self._all_statements(batch):
                # Direct execution is a synchronous-driver optimisation, but for bulk inserts
                # (one COPY on PostgreSQL); anything else runs the usual way.
                if isinstance(statement, Direct):
                    statement = statement.statement
                    if await copy_direct_async(self.session, statement, params):
                        continue
                await self.session.execute(statement, params)
        except SQLAlchemyError as exc:
            raise _translate(exc, self.participants) from exc

    async def _commit_transaction(self) -> None:
        try:
            await self.session.commit()
        except SQLAlchemyError as exc:
            raise _translate(exc, self.participants) from exc

    async def _rollback(self) -> None:
        await self.session.rollback()

    async def _after_commit(self, batch: CommitBatch) -> None:
        _notify_committed(self.participants, batch)

    async def _end(self) -> None:
        await self.session.close()
