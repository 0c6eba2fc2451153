"""The unit of work: track aggregates, dispatch in-transaction handlers, commit once.

:class:`UnitOfWork` (synchronous) and :class:`AsyncUnitOfWork` (asyncio) are thin shells around
:func:`tidings.core.commit.commit_steps`: they only perform the steps it yields. Storage-specific
subclasses (SQLAlchemy, in-memory) supply how to begin, load, persist, commit and roll back.

Usage (the same for every store)::

    with uow:                               # begins a transaction
        order = Order.start(...)
        uow.add(order)
        uow.commit()                        # dispatch, persist, commit; events cleared
    # leaving the block without commit() rolls back

If anything raises during ``commit()`` (a handler, the database), everything rolls back,
in-transaction handlers' effects included, and the aggregates keep their pending events.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Generator, Iterable
from types import TracebackType
from typing import Any, TypeVar
from uuid import UUID

from tidings.core.aggregate import Aggregate
from tidings.core.commit import (
    DEFAULT_MAX_ROUNDS,
    Commit,
    CommitBatch,
    Invoke,
    Persist,
    Step,
    commit_steps,
)
from tidings.core.dispatch import HandlerContext, Handlers
from tidings.core.envelope import Clock, RecordingContext, _context, caused_by, restore
from tidings.core.ids import uuid7
from tidings.errors import UnitOfWorkError

A = TypeVar("A", bound=Aggregate)


class UnitOfWorkBase:
    """State and rules shared by the sync and async shells."""

    def __init__(
        self,
        handlers: Handlers | None = None,
        *,
        producer: str | None = None,
        correlation_id: UUID | None = None,
        clock: Clock | None = None,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
    ) -> None:
        if max_rounds < 1:
            raise UnitOfWorkError("max_rounds must be at least 1")
        self.handlers = handlers if handlers is not None else Handlers()
        self.producer = producer
        self.max_rounds = max_rounds
        self._fixed_correlation_id = correlation_id
        self._clock = clock
        self._tracked: list[Aggregate] = []
        self._active = False
        self._committed = False
        self._token: contextvars.Token[RecordingContext] | None = None
        #: The batch written by the last successful commit.
        self.last_commit: CommitBatch | None = None

    # -- tracking ----------------------------------------------------------------------------

    def track(self, aggregate: A) -> A:
        """Make the unit of work responsible for ``aggregate``'s pending events."""
        self._require_active()
        if not isinstance(aggregate, Aggregate):
            raise UnitOfWorkError(f"{aggregate!r} is not an Aggregate")
        if not any(a is aggregate for a in self._tracked):
            self._tracked.append(aggregate)
        return aggregate

    def aggregates(self) -> Iterable[Aggregate]:
        """Every aggregate this unit of work will commit (subclasses add store-tracked ones)."""
        return list(self._tracked)

    # -- lifecycle helpers -------------------------------------------------------------------

    def _require_active(self) -> None:
        if not self._active:
            raise UnitOfWorkError("the unit of work is not open: use it as `with uow:` first")

    def _open(self) -> None:
        if self._active:
            raise UnitOfWorkError("the unit of work is already open (units of work do not nest)")
        self._active = True
        self._committed = False
        self._tracked = []
        outer = _context.get()
        self.correlation_id = self._fixed_correlation_id or outer.correlation_id or uuid7()
        self._token = _context.set(
            RecordingContext(
                correlation_id=self.correlation_id,
                causation_id=outer.causation_id,
                producer=self.producer if self.producer is not None else outer.producer,
                clock=self._clock or outer.clock,
            )
        )

    def _close(self) -> None:
        self._active = False
        self._tracked = []
        if self._token is not None:
            try:
                _context.reset(self._token)
            except ValueError:  # closed from another context (e.g. a different task)
                pass
            self._token = None

    def _steps(self) -> Generator[Step, None, CommitBatch]:
        self._require_active()
        if self._committed:
            raise UnitOfWorkError("this unit of work was already committed; open a new one")
        return commit_steps(self.aggregates, self.handlers, max_rounds=self.max_rounds)

    def _context_for(self, step: Invoke) -> HandlerContext:
        return HandlerContext(
            envelope=step.envelope, uow=self, delivery_id=str(step.envelope.event_id)
        )

    def _finish(self, batch: CommitBatch) -> None:
        self._committed = True
        self.last_commit = batch
        for aggregate in batch.aggregates:
            aggregate._committed(batch.last_sequence)


def _annotate(exc: BaseException, step: Invoke) -> None:
    exc.add_note(
        f"raised by in-transaction handler {step.subscription.name} "
        f"for {step.envelope.describe()}; the unit of work was rolled back"
    )


class UnitOfWork(UnitOfWorkBase):
    """Synchronous shell. Subclasses implement ``_begin/_persist/_commit_transaction/_rollback``."""

    def __enter__(self) -> UnitOfWork:
        self._open()
        try:
            self._begin()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._committed:
                self._rollback()
        finally:
            try:
                self._end()
            finally:
                self._close()

    def add(self, aggregate: A) -> A:
        """Add a new aggregate (or one loaded elsewhere) to this unit of work."""
        return self.track(aggregate)

    def commit(self) -> CommitBatch:
        steps = self._steps()
        try:
            step = next(steps)
            while True:
                if isinstance(step, Invoke):
                    self._invoke(step)
                elif isinstance(step, Persist):
                    self._persist(step.batch)
                else:
                    self._commit_transaction()
                step = next(steps)
        except StopIteration as done:
            batch: CommitBatch = done.value
        except BaseException:
            self._rollback()
            raise
        self._finish(batch)
        self._after_commit(batch)
        return batch

    def rollback(self) -> None:
        self._require_active()
        self._rollback()

    def _invoke(self, step: Invoke) -> None:
        subscription = step.subscription
        if subscription.is_async:
            raise UnitOfWorkError(
                f"in-transaction handler {subscription.name} is a coroutine function: "
                "use an asyncio unit of work, or make the handler synchronous"
            )
        token = caused_by(step.envelope)
        try:
            if subscription.wants_context:
                result = subscription.handler(step.envelope.event, self._context_for(step))
            else:
                result = subscription.handler(step.envelope.event)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise UnitOfWorkError(
                    f"in-transaction handler {subscription.name} returned an awaitable in a "
                    "synchronous unit of work"
                )
        except BaseException as exc:
            _annotate(exc, step)
            raise
        finally:
            restore(token)

    # -- store hooks -------------------------------------------------------------------------

    def _begin(self) -> None:
        """Start the transaction."""

    def _end(self) -> None:
        """Release resources after the block ends (committed or not)."""

    def _persist(self, batch: CommitBatch) -> None:
        """Write state and events inside the transaction."""

    def _commit_transaction(self) -> None:
        """Make the transaction durable."""

    def _rollback(self) -> None:
        """Undo everything since ``_begin``."""

    def _after_commit(self, batch: CommitBatch) -> None:
        """Runs after a successful commit (e.g. to wake an in-process relay)."""


class AsyncUnitOfWork(UnitOfWorkBase):
    """asyncio shell: the same steps, awaited."""

    async def __aenter__(self) -> AsyncUnitOfWork:
        self._open()
        try:
            await self._begin()
        except BaseException:
            self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._committed:
                await self._rollback()
        finally:
            try:
                await self._end()
            finally:
                self._close()

    def add(self, aggregate: A) -> A:
        return self.track(aggregate)

    async def commit(self) -> CommitBatch:
        steps = self._steps()
        try:
            step = next(steps)
            while True:
                if isinstance(step, Invoke):
                    await self._invoke(step)
                elif isinstance(step, Persist):
                    await self._persist(step.batch)
                elif isinstance(step, Commit):
                    await self._commit_transaction()
                step = next(steps)
        except StopIteration as done:
            batch: CommitBatch = done.value
        except BaseException:
            await self._rollback()
            raise
        self._finish(batch)
        await self._after_commit(batch)
        return batch

    async def rollback(self) -> None:
        self._require_active()
        await self._rollback()

    async def _invoke(self, step: Invoke) -> None:
        subscription = step.subscription
        token = caused_by(step.envelope)
        try:
            result: Any
            if subscription.wants_context:
                result = subscription.handler(step.envelope.event, self._context_for(step))
            else:
                result = subscription.handler(step.envelope.event)
            if inspect.isawaitable(result):
                await result
        except BaseException as exc:
            _annotate(exc, step)
            raise
        finally:
            restore(token)

    async def _begin(self) -> None:
        """Start the transaction."""

    async def _end(self) -> None:
        """Release resources after the block ends."""

    async def _persist(self, batch: CommitBatch) -> None:
        """Write state and events inside the transaction."""

    async def _commit_transaction(self) -> None:
        """Make the transaction durable."""

    async def _rollback(self) -> None:
        """Undo everything since ``_begin``."""

    async def _after_commit(self, batch: CommitBatch) -> None:
        """Runs after a successful commit."""
