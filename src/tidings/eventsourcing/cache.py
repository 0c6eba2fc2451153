"""Recently committed aggregates kept in memory, so that loading one needs no replay.

Loading an event-sourced aggregate means reading its stream and applying every event (or a
snapshot and the events after it). Commands mostly touch aggregates this process touched a
moment ago, so the event store keeps a private copy of each aggregate it has just committed (or
loaded and committed unchanged), up to ``maxsize`` of them, least recently used first out.

A load takes the copy out of the cache (no other unit of work can get the same object) and, with
``fast_forward`` (the default), applies whatever was appended to its stream since: one indexed
read that normally finds nothing. So the aggregate is exactly what a full replay gives, even when
other processes write the same streams. A copy of what was loaded goes back at once, so a unit
of work that reads and does not commit, or whose command fails, leaves the cache as it was.

Without ``fast_forward`` the read is skipped too; use it only when this process is the only
writer of these streams, since an entry made stale by another writer then surfaces as a
:class:`~tidings.errors.ConcurrencyError` on save. Such a cache gets its copy back only when the
unit of work commits, so after a conflict the entry is gone and the retry reads the stream.

Copies are deep (pickle, or ``copy.deepcopy`` when pickle cannot), so the caller owns what it
loaded or saved and nothing it does to it reaches the cache. An aggregate that cannot be copied
is simply not cached.
"""

from __future__ import annotations

import copy
import logging
import pickle
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, TypeVar

from tidings.core.aggregate import Aggregate, EventSourcedAggregate

A = TypeVar("A", bound=EventSourcedAggregate)

log = logging.getLogger("tidings.eventsourcing.cache")

#: Aggregates kept by default: a few megabytes for typical small aggregates.
DEFAULT_CACHE_SIZE = 10_000


class AggregateCache:
    """Up to ``maxsize`` committed aggregates by stream id (see the module docstring)."""

    def __init__(self, maxsize: int = DEFAULT_CACHE_SIZE, *, fast_forward: bool = True) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ValueError(f"maxsize must be an integer >= 1, got {maxsize!r}")
        self.maxsize = maxsize
        self.fast_forward = fast_forward
        self._entries: OrderedDict[str, EventSourcedAggregate] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, cls: type[A], stream_id: str) -> A | None:
        """The cached aggregate of ``stream_id``, removed from the cache; None if there is
        none of class ``cls``."""
        with self._lock:
            found = self._entries.pop(stream_id, None)
        if type(found) is not cls:
            return None
        return found

    def keep(self, aggregates: Iterable[Aggregate]) -> None:
        """Cache a copy of each committed event-sourced aggregate (one with stored events and
        nothing pending)."""
        for aggregate in aggregates:
            if (
                not isinstance(aggregate, EventSourcedAggregate)
                or not aggregate.version
                or aggregate._pending_list()
            ):
                continue
            stream_id = aggregate.stream_id
            try:
                kept = _copy(aggregate)
            except Exception as exc:  # holds something uncopyable: just not cached
                log.debug("not caching %s: %r", stream_id, exc)
                self.discard(stream_id)
                continue
            with self._lock:
                self._entries[stream_id] = kept
                self._entries.move_to_end(stream_id)
                while len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)

    def loaded(self, aggregate: EventSourcedAggregate) -> None:
        """Keep a copy of an aggregate just loaded in its current state, so that a unit of work
        that does not commit (a read, a failed command) leaves the cache as it found it. Only a
        fast-forwarding cache: a trusting one must get its copy at commit only, or a stale copy
        would come back after every conflict."""
        if self.fast_forward:
            self.keep([aggregate])

    def discard(self, stream_id: str) -> None:
        with self._lock:
            self._entries.pop(stream_id, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _copy(aggregate: EventSourcedAggregate) -> EventSourcedAggregate:
    """A deep copy: through pickle when the aggregate allows it (its C implementation copies a
    small aggregate in about half the time ``copy.deepcopy`` takes), else ``deepcopy``."""
    try:
        copied = pickle.loads(pickle.dumps(aggregate, pickle.HIGHEST_PROTOCOL))
    except Exception:  # a class pickle cannot name (defined in a function), a lambda inside...
        return copy.deepcopy(aggregate)
    return copied  # type: ignore[no-any-return]


class _Default:
    def __repr__(self) -> str:
        return "<a new AggregateCache>"


#: Stands for "a cache of the default size, private to this store" in signatures.
DEFAULT: Any = _Default()


def cache_option(cache: AggregateCache | None) -> AggregateCache | None:
    """The cache a store or participant uses: a new default one for :data:`DEFAULT`, the one
    given, or None for none."""
    if cache is DEFAULT:
        return AggregateCache()
    if cache is not None and not isinstance(cache, AggregateCache):
        raise TypeError(f"cache must be an AggregateCache or None, got {cache!r}")
    return cache
