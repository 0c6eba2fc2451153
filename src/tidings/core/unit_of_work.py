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
from typing import Any, Self, TypeVar
from uuid import UUID

from tidings.core.aggregate import Aggregate, recording_watermark
from tidings.core.commit import (
    DEFAULT_MAX_ROUNDS,
    Commit,
    CommitBatch,
    Dispatch,
    Persist,
    Step,
    commit_steps,
)
from tidings.core.dispatch import HandlerContext, Handlers, Subscription
from tidings.core.envelope import (
    Cause,
    CauseToken,
    Clock,
    Envelope,
    RecordingContext,
    _cause,
    _context,
    current_recording_context,
)
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
        # By identity, in tracking order: tracking the same aggregate again is a no-op, and a
        # unit of work tracking thousands of aggregates does not scan them all on each call.
        # The values keep the aggregates alive, so their ids stay unique while tracked.
        self._tracked: dict[int, Aggregate] = {}
        self._active = False
        self._committed = False
        self._rolled_back = False
        self._watermark = 0
        self._token: contextvars.Token[RecordingContext] | None = None
        self._cause_token: CauseToken | None = None
        self._cause = Cause()
        self._dispatching = False
        self._handler_context: HandlerContext | None = None
        #: The batch written by the last successful commit.
        self.last_commit: CommitBatch | None = None

    # -- tracking ----------------------------------------------------------------------------

    def track(self, aggregate: A) -> A:
        """Make the unit of work responsible for ``aggregate``'s pending events."""
        self._require_active()
        if not isinstance(aggregate, Aggregate):
            raise UnitOfWorkError(f"{aggregate!r} is not an Aggregate")
        self._tracked.setdefault(id(aggregate), aggregate)
        return aggregate

    def aggregates(self) -> Iterable[Aggregate]:
        """Every aggregate this unit of work will commit (subclasses add store-tracked ones)."""
        return list(self._tracked.values())

    # -- lifecycle helpers -------------------------------------------------------------------

    def _require_active(self) -> None:
        if not self._active:
            raise UnitOfWorkError("the unit of work is not open: use it as `with uow:` first")

    def _open(self) -> None:
        if self._active:
            raise UnitOfWorkError("the unit of work is already open (units of work do not nest)")
        self._active = True
        self._committed = False
        self._rolled_back = False
        self._tracked = {}
        outer = current_recording_context()
        self.correlation_id = self._fixed_correlation_id or outer.correlation_id or uuid7()
        self._token = _context.set(
            RecordingContext(
                correlation_id=self.correlation_id,
                causation_id=outer.causation_id,
                producer=self.producer if self.producer is not None else outer.producer,
                clock=self._clock or outer.clock,
            )
        )
        # An outer cause is folded in above. Inside, this unit of work's own cell holds the
        # cause: dispatch points it at each event in turn (see tidings.core.envelope).
        self._cause = Cause()
        self._cause_token = _cause.set(self._cause)

    def _close(self) -> None:
        self._active = False
        self._tracked = {}
        self._handler_context = None
        if self._token is not None:
            try:
                if self._cause_token is not None:
                    _cause.reset(self._cause_token)
                _context.reset(self._token)
            except ValueError:  # closed from another context (e.g. a different task)
                pass
            self._token = None
            self._cause_token = None

    def _steps(self) -> Generator[Step, None, CommitBatch]:
        self._require_active()
        if self._dispatching:
            raise UnitOfWorkError(
                "commit() was called from an in-transaction handler; the unit of work commits "
                "once, after its handlers return"
            )
        if self._committed:
            raise UnitOfWorkError("this unit of work was already committed; open a new one")
        if self._rolled_back:
            # After a rollback the tracked objects may still carry what the failed attempt did
            # to them (the in-memory store's working copies do): committing them now would
            # commit the effects of handlers that failed.
            raise UnitOfWorkError(
                "this unit of work was rolled back; leave the block and open a new one"
            )
        self._watermark = recording_watermark()
        return commit_steps(self.aggregates, self.handlers, max_rounds=self.max_rounds)

    def _context_for(self, envelope: Envelope[Any]) -> HandlerContext:
        # One per event, shared by its handlers (it is immutable).
        context = self._handler_context
        if context is None or context.envelope is not envelope:
            context = self._handler_context = HandlerContext(
                envelope=envelope, uow=self, delivery_id=str(envelope.event_id)
            )
        return context

    # While a round's handlers run, the shells point this unit of work's cause cell at each
    # event in turn. The cell was installed in the context that opened the unit of work; if
    # commit runs in another one (inside ``recording_context()``, another task), it is installed
    # there too for the duration of the round.

    def _enter_round(self) -> CauseToken | None:
        self._dispatching = True
        cell = self._cause
        return _cause.set(cell) if _cause.get() is not cell else None

    def _leave_round(self, token: CauseToken | None) -> None:
        self._cause.envelope = None
        self._dispatching = False
        if token is not None:
            _cause.reset(token)

    def _abandon(self) -> None:
        """A commit failed: forget what its handlers recorded, before the store rolls back.

        The events the application recorded before ``commit()`` stay pending (undelivered);
        events recorded by in-transaction handlers during the attempt were effects of the
        rolled-back transaction, and a retry re-runs those handlers anyway.
        """
        self._rolled_back = True
        try:
            aggregates = list(self.aggregates())
        except Exception:  # a broken session must not hide the error that broke it
            aggregates = list(self._tracked.values())
        for aggregate in aggregates:
            aggregate._discard_recorded_since(self._watermark)

    def _finish(self, batch: CommitBatch) -> None:
        self._committed = True
        self.last_commit = batch
        batch.mark_committed()


def _annotate(exc: BaseException, subscription: Subscription, envelope: Envelope[Any]) -> None:
    exc.add_note(
        f"raised by in-transaction handler {subscription.name} "
        f"for {envelope.describe()}; the unit of work was rolled back"
    )


class UnitOfWork(UnitOfWorkBase):
    """Synchronous shell. Subclasses implement ``_begin/_persist/_commit_transaction/_rollback``."""

    def __enter__(self) -> Self:
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
                if isinstance(step, Dispatch):
                    self._dispatch(step)
                elif isinstance(step, Persist):
                    self._persist(step.batch)
                else:
                    self._commit_transaction()
                step = next(steps)
        except StopIteration as done:
            batch: CommitBatch = done.value
        except BaseException:
            self._abandon()
            self._rollback()
            raise
        self._finish(batch)
        self._after_commit(batch)
        return batch

    def rollback(self) -> None:
        self._require_active()
        self._rolled_back = True
        self._rollback()

    def _dispatch(self, step: Dispatch) -> None:
        """Run one round's handlers: the hot path (keep it lean; see bench/dispatch.py)."""
        token = self._enter_round()
        cell = self._cause
        try:
            # zip reuses its result tuple when it is unpacked at once: no allocation. The lists
            # are built together by plan_round, so the length check of strict= is not needed.
            for envelope, subscriptions in zip(step.envelopes, step.subscriptions):  # noqa: B905
                cell.envelope = envelope
                event = envelope.event
                for subscription in subscriptions:
                    try:
                        if subscription.direct:
                            result = subscription.handler(event)
                        else:
                            result = self._call(subscription, envelope)
                        # `is not None` first: inspect.isawaitable is slow; handlers return None.
                        if result is not None and inspect.isawaitable(result):
                            if inspect.iscoroutine(result):
                                result.close()
                            raise UnitOfWorkError(
                                f"in-transaction handler {subscription.name} returned an "
                                "awaitable in a synchronous unit of work"
                            )
                    except BaseException as exc:
                        _annotate(exc, subscription, envelope)
                        raise
        finally:
            self._leave_round(token)

    def _call(self, subscription: Subscription, envelope: Envelope[Any]) -> Any:
        """The handlers off the fast path: those taking a context, and coroutines (refused)."""
        if subscription.is_async:
            raise UnitOfWorkError(
                f"in-transaction handler {subscription.name} is a coroutine function: "
                "use an asyncio unit of work, or make it synchronous"
            )
        if subscription.wants_context:
            return subscription.handler(envelope.event, self._context_for(envelope))
        return subscription.handler(envelope.event)

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

    async def __aenter__(self) -> Self:
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
                if isinstance(step, Dispatch):
                    await self._dispatch(step)
                elif isinstance(step, Persist):
                    await self._persist(step.batch)
                elif isinstance(step, Commit):
                    await self._commit_transaction()
                step = next(steps)
        except StopIteration as done:
            batch: CommitBatch = done.value
        except BaseException:
            self._abandon()
            await self._rollback()
            raise
        self._finish(batch)
        await self._after_commit(batch)
        return batch

    async def rollback(self) -> None:
        self._require_active()
        self._rolled_back = True
        await self._rollback()

    async def _dispatch(self, step: Dispatch) -> None:
        token = self._enter_round()
        cell = self._cause
        try:
            # zip reuses its result tuple when it is unpacked at once: no allocation. The lists
            # are built together by plan_round, so the length check of strict= is not needed.
            for envelope, subscriptions in zip(step.envelopes, step.subscriptions):  # noqa: B905
                cell.envelope = envelope
                event = envelope.event
                for subscription in subscriptions:
                    try:
                        result: Any
                        if subscription.wants_context:
                            result = subscription.handler(event, self._context_for(envelope))
                        else:
                            result = subscription.handler(event)
                        if result is not None and inspect.isawaitable(result):
                            await result
                    except BaseException as exc:
                        _annotate(exc, subscription, envelope)
                        raise
        finally:
            self._leave_round(token)

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
