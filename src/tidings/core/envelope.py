"""The envelope: the metadata that travels with every event, and where it comes from.

Aggregates build envelopes at the moment they record an event. What they cannot know themselves
(the correlation and causation ids, the producer, the clock) comes from the *recording context*, a
context variable that the unit of work and the dispatchers set: while a handler for event E runs,
every event recorded is caused by E and shares E's correlation id, with no plumbing in user code.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

E_co = TypeVar("E_co", covariant=True)

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """Timezone-aware UTC now."""
    return datetime.now(UTC)


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


def current_recording_context() -> RecordingContext:
    return _context.get()


@contextmanager
def recording_context(
    *,
    correlation_id: UUID | None = None,
    causation_id: UUID | None = None,
    producer: str | None = None,
    clock: Clock | None = None,
) -> Iterator[RecordingContext]:
    """Set the ambient correlation/causation/producer/clock for events recorded inside."""
    outer = _context.get()
    ctx = RecordingContext(
        correlation_id=correlation_id if correlation_id is not None else outer.correlation_id,
        causation_id=causation_id if causation_id is not None else outer.causation_id,
        producer=producer if producer is not None else outer.producer,
        clock=clock if clock is not None else outer.clock,
    )
    token = _context.set(ctx)
    try:
        yield ctx
    finally:
        _context.reset(token)


def caused_by(envelope: Envelope[Any]) -> contextvars.Token[RecordingContext]:
    """Enter the context of handling ``envelope``; returns the token for :func:`restore`.

    A plain function rather than a context manager because it sits on the dispatch hot path.
    """
    outer = _context.get()
    return _context.set(
        RecordingContext(
            correlation_id=envelope.correlation_id,
            causation_id=envelope.event_id,
            producer=outer.producer,
            clock=outer.clock,
        )
    )


def restore(token: contextvars.Token[RecordingContext]) -> None:
    _context.reset(token)
