"""Aggregates: the only objects that record events.

An aggregate enforces its rules, then records what happened with :meth:`Aggregate.record`. The
recorded events wait in the aggregate (``pending_events``) until a unit of work commits them; only
then are they cleared. If the commit fails they stay pending and nothing was delivered.

Two flavours:

* :class:`Aggregate`: state is stored as it is (for example as SQLAlchemy-mapped columns) and
  events are recorded beside the state change.
* :class:`EventSourcedAggregate`: state is *derived* from events. Each event type has an apply
  method, marked with :func:`applies`, that mutates state unconditionally. ``record`` calls it, and
  so does replay from the store: one method serves both, so they cannot drift apart.

Aggregates work as plain classes and as SQLAlchemy-mapped classes (which skip ``__init__`` on
load), so the bookkeeping lives in lazily created instance attributes, never in ``__init__``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Self, TypeVar, cast

from tidings.core.envelope import Envelope, _context, current_cause
from tidings.core.events import spec_of
from tidings.core.ids import uuid7
from tidings.errors import ConfigurationError

# One process-wide sequence orders recordings across all aggregates, so a unit of work can
# dispatch events in the order they were recorded even when several aggregates are involved.
_recording_sequence = itertools.count(1)

_PENDING = "_tidings_pending"
#: The pending list's type, built once: subscripting ``Envelope[Any]`` at run time goes through
#: typing's cache, a few microseconds on every record().
_PendingList = list[tuple[int, Envelope[Any]]]

F = TypeVar("F", bound=Callable[..., None])


class Aggregate:
    """Base class for aggregates whose state is stored directly.

    Subclasses need an ``id`` attribute. The stream id is ``"{stream_category}-{id}"`` where the
    category defaults to the class name. ``version`` counts recorded events; map it to a column
    to make it durable (it then also gives stored aggregates a meaningful stream version).
    """

    stream_category: ClassVar[str | None] = None
    version: int = 0

    @classmethod
    def category(cls) -> str:
        return cls.stream_category or cls.__name__

    @property
    def stream_id(self) -> str:
        return f"{self.category()}-{identity(self)}"

    def record(self, event: object) -> Envelope[Any]:
        """Record that ``event`` happened to this aggregate; returns its envelope."""
        spec = spec_of(type(event))
        context = _context.get()
        cause = current_cause()  # the event being handled, if any: this one's cause
        version = (self.version or 0) + 1
        self._before_record(event)
        self.version = version
        event_id = uuid7()
        # Positional, in Envelope's field order: keywords cost about 2 us more per event.
        envelope: Envelope[Any] = Envelope(
            event,
            event_id,
            spec.name,
            spec.version,
            context.clock(),  # occurred_at
            self.stream_id,
            version,
            cause.correlation_id if cause is not None else context.correlation_id or event_id,
            cause.event_id if cause is not None else context.causation_id,
            context.producer,
        )
        self._pending_list().append((next(_recording_sequence), envelope))
        return envelope

    def _before_record(self, event: object) -> None:
        """Hook for subclasses: runs before the version moves (event sourcing applies here)."""

    @property
    def pending_events(self) -> list[Envelope[Any]]:
        """Recorded but not yet committed, in recording order."""
        return [envelope for _, envelope in self._pending_list()]

    def _pending_list(self) -> list[tuple[int, Envelope[Any]]]:
        pending = self.__dict__.get(_PENDING)
        if pending is None:
            pending = self.__dict__[_PENDING] = []
        return cast(_PendingList, pending)

    def _committed(self, up_to_sequence: int) -> None:
        """Called by the unit of work after a successful commit."""
        pending = self._pending_list()
        pending[:] = [item for item in pending if item[0] > up_to_sequence]

    def _discard_recorded_since(self, watermark: int) -> None:
        """Forget events recorded after ``watermark`` (a failed commit's handlers recorded them).

        The version goes back with them, so a retry numbers the stream as if they never
        happened. State an event-sourced apply method changed is not undone: reload the
        aggregate if in-transaction handlers may have touched it.
        """
        pending = self._pending_list()
        dropped = [envelope for sequence, envelope in pending if sequence > watermark]
        if not dropped:
            return
        pending[:] = [item for item in pending if item[0] <= watermark]
        if dropped[0].stream_version is not None:
            self.version = dropped[0].stream_version - 1


def recording_watermark() -> int:
    """A number greater than every recording so far and smaller than every later one."""
    return next(_recording_sequence)


def identity(aggregate: Aggregate) -> Any:
    """The ``id`` of an aggregate, with a clear error if it has none."""
    try:
        return aggregate.id  # type: ignore[attr-defined]
    except AttributeError:
        raise ConfigurationError(
            f"{type(aggregate).__qualname__} has no `id`: aggregates need an identity"
        ) from None


def applies(event_type: type) -> Callable[[F], F]:
    """Mark a method of an :class:`EventSourcedAggregate` as the one that applies ``event_type``."""

    def mark(fn: F) -> F:
        fn.__tidings_applies__ = event_type  # type: ignore[attr-defined]
        return fn

    return mark


class EventSourcedAggregate(Aggregate):
    """An aggregate whose state is the left fold of its events through its apply methods.

    Apply methods must not raise for a valid stored event and must not check rules: rules are
    checked in the command method *before* recording. Event types without an apply method are
    allowed (an event may carry information the aggregate itself does not need).
    """

    _appliers: ClassVar[dict[type, Callable[[Any, Any], None]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        appliers: dict[type, Callable[[Any, Any], None]] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                target = getattr(attr, "__tidings_applies__", None)
                if target is not None:
                    appliers[target] = attr
        cls._appliers = appliers

    def _before_record(self, event: object) -> None:
        self.apply(event)

    def apply(self, event: object) -> None:
        """Apply one event to state (no recording). Used by replay."""
        for klass in type(event).__mro__:
            fn = self._appliers.get(klass)
            if fn is not None:
                fn(self, event)
                return

    @classmethod
    def blank(cls, id: Any) -> Self:
        """An instance with only its identity set, ready for replay (``__init__`` is skipped)."""
        instance = cls.__new__(cls)
        instance.id = id  # type: ignore[attr-defined]
        instance.version = 0
        return instance

    @classmethod
    def replay(cls, id: Any, events: Iterable[object], *, start: Self | None = None) -> Self:
        """Rebuild an aggregate from its stored events (optionally on top of a snapshot)."""
        instance = start if start is not None else cls.blank(id)
        version = instance.version
        for event in events:
            instance.apply(event)
            version += 1
        instance.version = version
        return instance
