"""An in-memory application harness: the whole event flow, no database, no relay process.

In-transaction handlers run inside the unit of work as usual. After each successful commit, the
harness delivers the committed events to their after-commit subscribers *immediately*, each
subscriber in its own in-memory unit of work (as the relay would, minus the waiting), and keeps
going until nothing new was committed. Failures are re-raised by default, so a test sees them.

::

    harness = InMemoryHarness(handlers)
    with harness.uow() as uow:
        uow.add(Order.place(...))
        uow.commit()                      # in-transaction handlers, then after-commit ones
    assert harness.types() == ["OrderPlaced", "PaymentAuthorized", ...]
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from tidings.core.commit import CommitBatch
from tidings.core.dispatch import HandlerContext, Handlers, Subscription, Timing
from tidings.core.envelope import Clock, Envelope, caused_by, restore
from tidings.errors import UnitOfWorkError
from tidings.persistence.memory import InMemoryStore, InMemoryUnitOfWork


@dataclass(frozen=True, slots=True)
class Delivery:
    subscriber: str
    envelope: Envelope[Any]
    error: BaseException | None = None


class _HarnessUnitOfWork(InMemoryUnitOfWork):
    def __init__(self, harness: InMemoryHarness, **kwargs: Any) -> None:
        super().__init__(harness.store, **kwargs)
        self._harness = harness

    def _after_commit(self, batch: CommitBatch) -> None:
        self._harness._committed(batch)


class InMemoryHarness:
    """Runs handlers of both timings against one :class:`InMemoryStore`."""

    def __init__(
        self,
        handlers: Handlers,
        *,
        store: InMemoryStore | None = None,
        producer: str | None = None,
        clock: Clock | None = None,
        raise_errors: bool = True,
        max_deliveries: int = 10_000,
    ) -> None:
        self.handlers = handlers
        self.store = store if store is not None else InMemoryStore()
        self.producer = producer
        self.clock = clock
        self.raise_errors = raise_errors
        self.max_deliveries = max_deliveries
        self.deliveries: list[Delivery] = []
        self._queue: deque[Envelope[Any]] = deque()
        self._draining = False

    def uow(self) -> InMemoryUnitOfWork:
        """A new unit of work whose commits trigger after-commit delivery."""
        return _HarnessUnitOfWork(
            self, handlers=self.handlers, producer=self.producer, clock=self.clock
        )

    # -- what happened ----------------------------------------------------------------------

    @property
    def events(self) -> list[Envelope[Any]]:
        """Every committed event, in commit order."""
        return list(self.store.events)

    def types(self) -> list[str]:
        return [envelope.event_type for envelope in self.store.events]

    def of_type(self, event_type: type) -> list[Any]:
        return [e.event for e in self.store.events if isinstance(e.event, event_type)]

    @property
    def failures(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.error is not None]

    # -- delivery ---------------------------------------------------------------------------

    def _committed(self, batch: CommitBatch) -> None:
        self._queue.extend(batch.envelopes)
        if self._draining:  # a subscriber's own commit: the outer loop picks its events up
            return
        self._draining = True
        try:
            self._drain()
        except BaseException:
            # The test is about to see this error; later deliveries would only muddle it.
            self._queue.clear()
            raise
        finally:
            self._draining = False

    def _drain(self) -> None:
        delivered = 0
        while self._queue:
            envelope = self._queue.popleft()
            for subscription in self.handlers.for_type(type(envelope.event), Timing.AFTER_COMMIT):
                delivered += 1
                if delivered > self.max_deliveries:
                    self._queue.clear()
                    raise UnitOfWorkError(
                        f"more than {self.max_deliveries} after-commit deliveries from one "
                        "commit: the subscribers probably feed each other forever"
                    )
                self._deliver(subscription, envelope)

    def _deliver(self, subscription: Subscription, envelope: Envelope[Any]) -> None:
        if subscription.is_async:
            raise UnitOfWorkError(
                f"after-commit subscriber {subscription.name} is a coroutine function; the "
                "in-memory harness is synchronous"
            )
        token = caused_by(envelope)
        try:
            with self.uow() as uow:
                context = HandlerContext(
                    envelope=envelope,
                    uow=uow,
                    delivery_id=f"{subscription.name}:{envelope.event_id}",
                    subscriber=subscription.name,
                )
                if subscription.wants_context:
                    subscription.handler(envelope.event, context)
                else:
                    subscription.handler(envelope.event)
                uow.commit()
        except Exception as exc:
            self.deliveries.append(Delivery(subscription.name, envelope, exc))
            if self.raise_errors:
                exc.add_note(
                    f"raised by after-commit subscriber {subscription.name} "
                    f"for {envelope.describe()}"
                )
                raise
            return
        finally:
            restore(token)
        self.deliveries.append(Delivery(subscription.name, envelope))
