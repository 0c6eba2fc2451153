"""Unit of work over SQLAlchemy 2 (``Session`` and ``AsyncSession``), for SQLite and PostgreSQL.

Aggregates are ordinary SQLAlchemy-mapped classes that also derive from
:class:`tidings.Aggregate`. The unit of work commits every aggregate it tracks *and* every
aggregate present in the session (loaded by any query), so an aggregate changed through a plain
``select()`` still has its events dispatched.

Other parts of tidings (the outbox, the event store) join the transaction as *commit
participants*: on persist they contribute SQL statements that run inside the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.base import Executable

from tidings.core.aggregate import Aggregate
from tidings.core.commit import CommitBatch
from tidings.core.unit_of_work import AsyncUnitOfWork, UnitOfWork, UnitOfWorkBase
from tidings.errors import StoreError, TidingsError

A = TypeVar("A", bound=Aggregate)

Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


class CommitParticipant(Protocol):
    """Contributes statements to a unit of work's transaction (sans-I/O: it only builds them)."""

    def statements(self, batch: CommitBatch) -> Iterable[tuple[Executable, Params]]: ...

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

    def _all_statements(self, batch: CommitBatch) -> list[tuple[Executable, Params]]:
        return [stmt for participant in self.participants for stmt in participant.statements(batch)]


class SqlUnitOfWork(UnitOfWork, _SqlCommon):
    """Synchronous unit of work on a SQLAlchemy ``Session``."""

    session: Session

    def __init__(
        self,
        sessions: sessionmaker[Session] | Engine,
        handlers: Any = None,
        *,
        participants: Sequence[CommitParticipant] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(handlers, **kwargs)
        self._sessions = (
            sessionmaker(sessions, expire_on_commit=False)
            if isinstance(sessions, Engine)
            else sessions
        )
        self.participants = list(participants)

    def get(self, cls: type[A], id: Any) -> A | None:
        """Load an aggregate by primary key and track it."""
        self._require_active()
        found = self.session.get(cls, id)
        return self.track(found) if found is not None else None

    def add(self, aggregate: A) -> A:
        self._require_active()
        self.session.add(aggregate)
        return self.track(aggregate)

    def aggregates(self) -> list[Aggregate]:
        return _session_aggregates(self.session, UnitOfWorkBase.aggregates(self))

    def _begin(self) -> None:
        self.session = self._sessions()

    def _persist(self, batch: CommitBatch) -> None:
        try:
            self.session.flush()
            for statement, params in self._all_statements(batch):
                self.session.execute(statement, params)
        except SQLAlchemyError as exc:
            raise _translate(exc, self.participants) from exc

    def _commit_transaction(self) -> None:
        try:
            self.session.commit()
        except SQLAlchemyError as exc:
            raise _translate(exc, self.participants) from exc

    def _rollback(self) -> None:
        self.session.rollback()

    def _after_commit(self, batch: CommitBatch) -> None:
        _notify_committed(self.participants, batch)

    def _end(self) -> None:
        self.session.close()


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
