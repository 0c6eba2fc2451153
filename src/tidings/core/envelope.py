"""The envelope: the metadata that travels with every event, and where it comes from.

Aggregates build envelopes at the moment they record an event. What they cannot know themselves
(the correlation and causation ids, the producer, the clock) comes from the *recording context*, a
context variable that the unit of work and the dispatchers set: while a handler for event E runs,
every event recorded is caused by E and shares E's correlation id, with no plumbing in user code.

The event being handled lives apart, in a :class:`Cause` cell held by a second context variable;
when set, it overrides the correlation and causation ids of the recording context.
:func:`current_recording_context` merges the two. A unit of work installs one cell when it opens
and, per event, only points the cell at the envelope: no object is built and no context variable
is touched per event, which keeps in-transaction dispatch cheap (``bench/dispatch.py``).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from tidings.core.frozen import quick_init

E_co = TypeVar("E_co", covariant=True)

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """Timezone-aware UTC now."""
    return datetime.now(UTC)


@quick_init
@dataclass(frozen=True, slots=True)
class Envelope(Generic[E_co]):
    """An event with its metadata. Immutable; handlers read it, nothing rewrites it."""

    event: E_co
    event_id: UUID
    event_type: str
    event_version: int
    occurred_at: datetime
    stream_id: str | None
    stream_version: int | None
    correlation_id: UUID
    causation_id: UUID | None
    producer: str | None
    headers: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        where = f" {self.stream_id}@{self.stream_version}" if self.stream_id else ""
        return f"{self.event_type} v{self.event_version}{where} ({self.event_id})"


@dataclass(frozen=True, slots=True)
class RecordingContext:
    """Ambient values stamped onto envelopes recorded in this context."""

    correlation_id: UUID | None = None
    causation_id: UUID | None = None
    producer: str | None = None
    clock: Clock = system_clock


_context: contextvars.ContextVar[RecordingContext] = contextvars.ContextVar(
    "tidings_recording_context",
    default=RecordingContext(),  # noqa: B039 - frozen dataclass, never mutated
)


class Cause:
    """A mutable cell: the envelope whose handlers are running here, if any."""

    __slots__ = ("envelope",)

    def __init__(self, envelope: Envelope[Any] | None = None) -> None:
        self.envelope = envelope


_cause: contextvars.ContextVar[Cause | None] = contextvars.ContextVar("tidings_cause", default=None)


def current_cause() -> Envelope[Any] | None:
    cell = _cause.get()
    return cell.envelope if cell is not None else None


def current_recording_context() -> RecordingContext:
    """The values stamped onto an event recorded here and now."""
    context = _context.get()
    cause = current_cause()
    if cause is None:
        return context
    return RecordingContext(
        correlation_id=cause.correlation_id,
        causation_id=cause.event_id,
        producer=context.producer,
        clock=context.clock,
    )


@contextmanager
def recording_context(
    *,
    correlation_id: UUID | None = None,
    causation_id: UUID | None = None,
    producer: str | None = None,
    clock: Clock | None = None,
) -> Iterator[RecordingContext]:
    """Set the ambient correlation/causation/producer/clock for events recorded inside."""
    outer = current_recording_context()
    ctx = RecordingContext(
        correlation_id=correlation_id if correlation_id is not None else outer.correlation_id,
        causation_id=causation_id if causation_id is not None else outer.causation_id,
        producer=producer if producer is not None else outer.producer,
        clock=clock if clock is not None else outer.clock,
    )
    token = _context.set(ctx)
    # The cause is folded into ``ctx`` already; clearing it lets these values win inside.
    cause_token = _cause.set(None)
    try:
        yield ctx
    finally:
        _cause.reset(cause_token)
        _context.reset(token)


CauseToken = contextvars.Token[Cause | None]


def caused_by(envelope: Envelope[Any]) -> CauseToken:
    """Enter the context of handling ``envelope``; returns the token for :func:`restore`.

    A plain function rather than a context manager because it sits on the dispatch hot path.
    """
    return _cause.set(Cause(envelope))


def restore(token: CauseToken) -> None:
    _cause.reset(token)
