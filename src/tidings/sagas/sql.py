"""Sagas on SQL: state, dedup records, commands and timeouts in the caller's transaction.

Concurrency: **per-key serialization, guarded by optimistic versioning with retry**. Loading an
instance locks its row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serializes writers
anyway), so concurrent events for one instance queue instead of racing. The version check stays
as the guard for what a lock cannot cover: each save must find the version it loaded
(``UPDATE ... WHERE version = :loaded``), and a new instance is an ``INSERT`` on its primary key,
so two events that both start the same instance conflict. The loser gets
:class:`SagaConcurrencyError`, rolls back, and is retried from a fresh load (with jittered
backoff), so no update is lost. :class:`SagaRunner` does the retrying for direct use; under the
relay, its retry policy does.

Durable timeouts: rows in ``tidings_saga_timeouts``. :class:`SagaRunner.fire_due_timeouts` takes
each due row in its own transaction, runs the saga, saves it and deletes the row together, so a
wake-up is delivered once in effect and survives restarts (a crash before commit leaves the row to
fire again). On PostgreSQL rows are claimed with ``FOR UPDATE SKIP LOCKED``, so several runners
can poll at once.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tidings.core.codec import Codec, default_codec
from tidings.core.envelope import Clock, Envelope, system_clock
from tidings.errors import StoreError
from tidings.sagas.definition import Saga
from tidings.sagas.runtime import (
    SagaOutcome,
    StoredSaga,
    key_for,
    route_for,
    route_for_type,
    run_saga,
)
from tidings.sagas.tables import saga_instances, saga_processed, saga_timeouts


def _backoff(attempt: int) -> None:
    # Full jitter: conflicting writers spread out instead of colliding again in lockstep.
    time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))


class SagaConcurrencyError(StoreError):
    """Another transaction changed the saga instance first; reload and retry."""


class CommandSink(Protocol):
    """Where a saga's commands go, inside the saga's transaction (e.g. the outbox)."""

    def send(
        self,
        session: Session,
        commands: Sequence[object],
        *,
        saga: str,
        key: str,
        cause: Envelope[Any] | None,
    ) -> None: ...


class SqlSagaStore:
    """Loads and saves saga instances through a caller-provided ``Session`` (no commits here)."""

    def __init__(self, sink: CommandSink, *, codec: Codec | None = None) -> None:
        self.sink = sink
        self.codec = codec or default_codec

    def load(
        self, session: Session, saga: str, key: str, *, lock: bool = True
    ) -> StoredSaga | None:
        query = select(saga_instances).where(
            saga_instances.c.saga == saga, saga_instances.c.key == key
        )
        row = session.execute(query.with_for_update() if lock else query).first()
        if row is None:
            return None
        return StoredSaga(key=key, state=row.state, version=row.version, completed=row.completed)

    def handle_event(
        self,
        session: Session,
        saga_cls: type[Saga[Any]],
        envelope: Envelope[Any],
        *,
        now: datetime,
    ) -> SagaOutcome | None:
        """Handle one event for one saga. None if the saga does not route this event type."""
        key = key_for(saga_cls, envelope.event)
        if key is None:
            return None
        message_id = str(envelope.event_id)
        already = session.execute(
            select(saga_processed.c.message_id).where(
                saga_processed.c.saga == saga_cls.name,
                saga_processed.c.message_id == message_id,
            )
        ).first()
        if already is not None:
            return SagaOutcome(saga_cls.name, key, handled=False, reason="duplicate message")
        stored = self.load(session, saga_cls.name, key)
        outcome = run_saga(saga_cls, envelope.event, stored, now=now, envelope=envelope)
        try:
            session.execute(
                insert(saga_processed).values(
                    saga=saga_cls.name, message_id=message_id, processed_at=now
                )
            )
        except IntegrityError as exc:  # a concurrent delivery of the same message won
            raise SagaConcurrencyError(
                f"saga {saga_cls.name}: message {message_id} is being handled concurrently"
            ) from exc
        self.save(session, outcome, now=now, cause=envelope)
        return outcome

    def handle_timeout(
        self, session: Session, saga_cls: type[Saga[Any]], key: str, message: object, now: datetime
    ) -> SagaOutcome:
        stored = self.load(session, saga_cls.name, key)
        outcome = run_saga(saga_cls, message, stored, now=now, key=key)
        self.save(session, outcome, now=now, cause=None)
        return outcome

    def save(
        self, session: Session, outcome: SagaOutcome, *, now: datetime, cause: Envelope[Any] | None
    ) -> None:
        if not outcome.handled:
            return
        table = saga_instances
        if outcome.expected_version == 0:
            try:
                with session.begin_nested():
                    session.execute(
                        insert(table).values(
                            saga=outcome.saga,
                            key=outcome.key,
                            state=outcome.state,
                            version=1,
                            completed=outcome.completed,
                            updated_at=now,
                        )
                    )
            except IntegrityError as exc:
                raise SagaConcurrencyError(
                    f"saga {outcome.saga} instance {outcome.key!r} was started concurrently"
                ) from exc
        else:
            result = session.execute(
                update(table)
                .where(
                    table.c.saga == outcome.saga,
                    table.c.key == outcome.key,
                    table.c.version == outcome.expected_version,
                )
                .values(
                    state=outcome.state,
                    version=outcome.expected_version + 1,
                    completed=outcome.completed,
                    updated_at=now,
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise SagaConcurrencyError(
                    f"saga {outcome.saga} instance {outcome.key!r} changed since version "
                    f"{outcome.expected_version} was loaded"
                )
        if outcome.cancel_timeouts:
            session.execute(
                delete(saga_timeouts).where(
                    saga_timeouts.c.saga == outcome.saga, saga_timeouts.c.key == outcome.key
                )
            )
        for timeout in outcome.timeouts:
            name, version, payload = self.codec.encode(timeout.message)
            session.execute(
                insert(saga_timeouts).values(
                    saga=outcome.saga,
                    key=outcome.key,
                    due_at=timeout.due_at,
                    message_type=name,
                    message_version=version,
                    payload=payload,
                    attempts=0,
                )
            )
        if outcome.commands:
            self.sink.send(
                session, outcome.commands, saga=outcome.saga, key=outcome.key, cause=cause
            )


class SagaRunner:
    """Runs sagas with their own transactions: event delivery with retry, and timeouts."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        sagas: Sequence[type[Saga[Any]]],
        sink: CommandSink,
        *,
        codec: Codec | None = None,
        clock: Clock = system_clock,
        max_conflict_retries: int = 10,
        max_timeout_attempts: int = 5,
    ) -> None:
        self.sessions = sessions
        self.sagas = list(sagas)
        self.store = SqlSagaStore(sink, codec=codec)
        self.codec = self.store.codec
        self.clock = clock
        self.max_conflict_retries = max_conflict_retries
        self.max_timeout_attempts = max_timeout_attempts
        self._by_name = {saga.name: saga for saga in self.sagas}

    def handles(self, event_type: type) -> bool:
        return any(route_for_type(saga, event_type) is not None for saga in self.sagas)

    def deliver(self, envelope: Envelope[Any]) -> list[SagaOutcome]:
        """Handle an event in every saga that routes it, each in its own transaction."""
        outcomes: list[SagaOutcome] = []
        for saga_cls in self.sagas:
            if route_for(saga_cls, envelope.event) is None:
                continue
            outcome = self._with_retry(partial(self._handle, saga_cls, envelope))
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _handle(
        self, saga_cls: type[Saga[Any]], envelope: Envelope[Any], session: Session
    ) -> SagaOutcome | None:
        return self.store.handle_event(session, saga_cls, envelope, now=self.clock())

    def _with_retry(self, work: Callable[[Session], SagaOutcome | None]) -> SagaOutcome | None:
        for attempt in range(1, self.max_conflict_retries + 1):
            try:
                with self.sessions() as session, session.begin():
                    return work(session)
            except SagaConcurrencyError:
                if attempt == self.max_conflict_retries:
                    raise
                _backoff(attempt)
        return None  # unreachable: the loop returns or raises

    def _due(self, moment: datetime) -> ColumnElement[bool]:
        """Timeouts that are due and not given up on."""
        return and_(
            saga_timeouts.c.due_at <= moment,
            saga_timeouts.c.attempts < self.max_timeout_attempts,
        )

    def due_timeouts(self, now: datetime | None = None) -> int:
        """How many timeouts are due (and not given up on)."""
        moment = now or self.clock()
        with self.sessions() as session:
            return int(
                session.scalar(
                    select(func.count()).select_from(saga_timeouts).where(self._due(moment))
                )
                or 0
            )

    def fire_due_timeouts(self, *, limit: int = 100) -> list[SagaOutcome]:
        """Deliver every due timeout once in effect; returns what they decided."""
        now = self.clock()
        with self.sessions() as session:
            ids = list(
                session.scalars(
                    select(saga_timeouts.c.id)
                    .where(self._due(now))
                    .order_by(saga_timeouts.c.due_at, saga_timeouts.c.id)
                    .limit(limit)
                )
            )
        outcomes: list[SagaOutcome] = []
        for timeout_id in ids:
            try:
                outcome = self._fire_one(timeout_id, now)
            except Exception as exc:
                self._record_failure(timeout_id, exc)
                continue
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _fire_one(self, timeout_id: int, now: datetime) -> SagaOutcome | None:
        return self._with_retry(partial(self._fire_in, timeout_id, now))

    def _fire_in(self, timeout_id: int, now: datetime, session: Session) -> SagaOutcome | None:
        row = session.execute(
            select(saga_timeouts)
            .where(saga_timeouts.c.id == timeout_id)
            .with_for_update(skip_locked=True)
        ).first()
        if row is None:  # fired by another runner, or cancelled meanwhile
            return None
        saga_cls = self._by_name.get(row.saga)
        if saga_cls is None:
            raise StoreError(f"timeout {timeout_id} names unknown saga {row.saga!r}")
        message = self.codec.decode(row.message_type, row.message_version, row.payload)
        session.execute(delete(saga_timeouts).where(saga_timeouts.c.id == timeout_id))
        return self.store.handle_timeout(session, saga_cls, row.key, message, now)

    def _record_failure(self, timeout_id: int, exc: Exception) -> None:
        detail = "".join(traceback.format_exception(exc))[-4000:]
        with self.sessions() as session, session.begin():
            session.execute(
                update(saga_timeouts)
                .where(saga_timeouts.c.id == timeout_id)
                .values(attempts=saga_timeouts.c.attempts + 1, last_error=detail)
            )
