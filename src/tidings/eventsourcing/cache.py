"""Recently committed aggregates kept in memory, so that loading one needs no replay.

Loading an event-sourced aggregate means reading its stream and applying every event (or a
snapshot and the events after it). Commands mostly touch aggregates this process touched a
moment ago, so the event store keeps a private copy of each aggregate it has just committed (or
loaded and committed unchanged), up to ``maxsize`` of them, least recently used first out.

A load gets a fresh copy, made from the kept one (so no two units of work ever share an object)
and, with ``fast_forward`` (the default), applies whatever was appended to its stream since: one
indexed read that normally finds nothing. So the aggregate is exactly what a full replay gives,
even when other processes write the same streams. The kept copy itself is never handed out or
changed: a unit of work that reads and does not commit, or whose command fails, leaves the cache
as it was. A load that had to apply newer events keeps a copy of the result.

Without ``fast_forward`` the read is skipped too; use it only when this process is the only
writer of these streams, since an entry made stale by another writer then surfaces as a
:class:`~tidings.errors.ConcurrencyError` on save. Such a cache hands its entry out only once and
gets a copy back only when the unit of work commits, so after a conflict the entry is gone and
the retry reads the stream.

Copies are deep, so the caller owns what it loaded or saved and nothing it does to it reaches the
cache. They are kept frozen, as pickled bytes: making a copy is one ``pickle.dumps`` at commit and
one ``pickle.loads`` at load, and ten thousand entries are ten thousand byte strings, which the
garbage collector does not have to walk (live objects it would). An aggregate pickle cannot take
is kept as a ``copy.deepcopy`` instead, and one that cannot be copied at all is simply not cached.
"""

from __future__ import annotations

import copy
import logging
import pickle
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple, TypeVar

from tidings.core.aggregate import Aggregate, EventSourcedAggregate

A = TypeVar("A", bound=EventSourcedAggregate)

log = logging.getLogger("tidings.eventsourcing.cache")

#: Aggregates kept by default: a few megabytes for typical small aggregates.
DEFAULT_CACHE_SIZE = 10_000


class _Entry(NamedTuple):
    """One kept aggregate: its class and version, and the frozen copy."""

    cls: type[EventSourcedAggregate]
    version: int
    #: ``pickle.dumps`` of the aggregate, or None when pickle cannot take it (then ``copy``).
    frozen: bytes | None
    #: A private ``deepcopy``, for an aggregate pickle cannot take; never handed out as such.
    copy: EventSourcedAggregate | None


class AggregateCache:
    """Up to ``maxsize`` committed aggregates by stream id (see the module docstring)."""

    def __init__(self, maxsize: int = DEFAULT_CACHE_SIZE, *, fast_forward: bool = True) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ValueError(f"maxsize must be an integer >= 1, got {maxsize!r}")
        self.maxsize = maxsize
        self.fast_forward = fast_forward
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, cls: type[A], stream_id: str) -> A | None:
        """A new copy of the cached aggregate of ``stream_id``; None if there is none of class
        ``cls``. A trusting cache (no ``fast_forward``) gives its entry out only once."""
        with self._lock:
            if self.fast_forward:
                entry = self._entries.get(stream_id)
                if entry is not None:
                    self._entries.move_to_end(stream_id)
            else:
                entry = self._entries.pop(stream_id, None)
        if entry is None or entry.cls is not cls:
            return None
        return _thaw(entry)  # type: ignore[return-value]

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
                entry = _freeze(aggregate)
            except Exception as exc:  # holds something uncopyable: just not cached
                log.debug("not caching %s: %r", stream_id, exc)
                self.discard(stream_id)
                continue
            with self._lock:
                self._entries[stream_id] = entry
                self._entries.move_to_end(stream_id)
                while len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)

    def loaded(self, aggregate: EventSourcedAggregate) -> None:
        """Note an aggregate just loaded, in its current state, so that the next load starts
        from it. Nothing to copy when the cache already holds that version of it (a cached load
        that found nothing newer). Only a fast-forwarding cache: a trusting one must get its
        copy at commit only, or a stale copy would come back after every conflict."""
        if not self.fast_forward:
            return
        with self._lock:
            entry = self._entries.get(aggregate.stream_id)
        if entry is not None and (entry.cls, entry.version) == (type(aggregate), aggregate.version):
            return  # the same events make the same state: the kept copy is this one
        self.keep([aggregate])

    def discard(self, stream_id: str) -> None:
        with self._lock:
            self._entries.pop(stream_id, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _freeze(aggregate: EventSourcedAggregate) -> _Entry:
    """The aggregate's frozen copy: pickled (its C implementation copies a small aggregate in
    about half the time ``copy.deepcopy`` takes), else a private deep copy."""
    try:
        frozen = pickle.dumps(aggregate, pickle.HIGHEST_PROTOCOL)
    except Exception:  # a class pickle cannot name (defined in a function), a lambda inside...
        return _Entry(type(aggregate), aggregate.version, None, copy.deepcopy(aggregate))
    return _Entry(type(aggregate), aggregate.version, frozen, None)


def _thaw(entry: _Entry) -> EventSourcedAggregate:
    if entry.frozen is not None:
        thawed: EventSourcedAggregate = pickle.loads(entry.frozen)
        return thawed
    return copy.deepcopy(entry.copy)  # type: ignore[return-value]


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
