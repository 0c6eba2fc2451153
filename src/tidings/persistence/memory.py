"""In-memory unit of work: real transactional semantics with no database.

For tests and pure domain code. Loading returns a *working copy* of the committed aggregate;
commit swaps working copies in; rollback throws them away. So a failing handler rolls back the
effects of the handlers before it, exactly as a database would.
"""

from __future__ import annotations

import copy
import threading
from typing import Any, TypeVar

from tidings.core.aggregate import _PENDING, Aggregate, identity
from tidings.core.commit import CommitBatch
from tidings.core.envelope import Envelope
from tidings.core.unit_of_work import AsyncUnitOfWork, UnitOfWork, UnitOfWorkBase

A = TypeVar("A", bound=Aggregate)


class InMemoryStore:
    """Committed aggregates by (class, id), and every committed event in commit order."""

    def __init__(self) -> None:
        self.aggregates: dict[tuple[type, Any], Aggregate] = {}
        self.events: list[Envelope[Any]] = []
        self.lock = threading.RLock()

    def stored(self, cls: type[A], id: Any) -> A | None:
        """The committed state (a copy), for assertions."""
        with self.lock:
            found = self.aggregates.get((cls, id))
            return copy.deepcopy(found) if found is not None else None  # type: ignore[return-value]

    def _write(self, batch: CommitBatch) -> None:
        with self.lock:
            for aggregate in batch.aggregates:
                saved = copy.deepcopy(aggregate)
                saved.__dict__.pop(_PENDING, None)
                self.aggregates[(type(aggregate), identity(aggregate))] = saved
            self.events.extend(batch.envelopes)


class _InMemoryTransaction:
    """The transactional bookkeeping shared by the sync and async in-memory shells."""

    store: InMemoryStore

    def _load(self, uow: UnitOfWorkBase, cls: type[A], id: Any) -> A | None:
        for aggregate in uow.aggregates():
            if type(aggregate) is cls and identity(aggregate) == id:
                return aggregate
        with self.store.lock:
            committed = self.store.aggregates.get((cls, id))
            if committed is None:
                return None
            working = copy.deepcopy(committed)
        return uow.track(working)  # type: ignore[return-value]


class InMemoryUnitOfWork(UnitOfWork, _InMemoryTransaction):
    def __init__(self, store: InMemoryStore | None = None, /, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store if store is not None else InMemoryStore()
        self._pending_batch: CommitBatch | None = None

    def get(self, cls: type[A], id: Any) -> A | None:
        self._require_active()
        return self._load(self, cls, id)

    def _persist(self, batch: CommitBatch) -> None:
        self._pending_batch = batch

    def _commit_transaction(self) -> None:
        if self._pending_batch is not None:
            self.store._write(self._pending_batch)
            self._pending_batch = None

    def _rollback(self) -> None:
        self._pending_batch = None


class AsyncInMemoryUnitOfWork(AsyncUnitOfWork, _InMemoryTransaction):
    def __init__(self, store: InMemoryStore | None = None, /, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store if store is not None else InMemoryStore()
        self._pending_batch: CommitBatch | None = None

    async def get(self, cls: type[A], id: Any) -> A | None:
        self._require_active()
        return self._load(self, cls, id)

    async def _persist(self, batch: CommitBatch) -> None:
        self._pending_batch = batch

    async def _commit_transaction(self) -> None:
        if self._pending_batch is not None:
            self.store._write(self._pending_batch)
            self._pending_batch = None

    async def _rollback(self) -> None:
        self._pending_batch = None
