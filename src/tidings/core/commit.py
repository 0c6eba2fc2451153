"""The commit algorithm, written once, with no I/O (the sans-I/O core of the unit of work).

:func:`commit_steps` is a generator. It decides *what* happens on commit and yields one step at a
time; a shell (synchronous or asyncio) performs each step and resumes it. Sync and async units of
work therefore share every rule: recording order, cascade rounds, the cycle bound, what gets
persisted and when the transaction commits.

The algorithm:

1. Collect every pending event of every aggregate in the unit of work that has not been
   dispatched yet, in the order it was recorded (a process-wide sequence orders recordings across
   aggregates).
2. Run the in-transaction handlers of each, in registration order. Handlers may change other
   aggregates, or add new ones; the events those record form the next round (breadth first).
3. Repeat until a round records nothing new. More than ``max_rounds`` rounds means the handlers
   feed each other forever: raise :class:`CascadeLimitExceeded` naming the causation chain.
4. Persist (state, event store appends, outbox rows), then commit once.

Any exception from any step propagates out of the generator; the shell rolls back.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from tidings.core.aggregate import Aggregate
from tidings.core.dispatch import Handlers, Subscription, Timing
from tidings.core.envelope import Envelope
from tidings.errors import CascadeLimitExceeded

DEFAULT_MAX_ROUNDS = 100


@dataclass(frozen=True, slots=True)
class Invoke:
    """Run one in-transaction handler for one event."""

    subscription: Subscription
    envelope: Envelope[Any]


@dataclass(slots=True)
class CommitBatch:
    """Everything one commit writes: events in recording order, and the aggregates involved."""

    envelopes: list[Envelope[Any]] = field(default_factory=list)
    #: Sequence number of each envelope, parallel to ``envelopes``.
    sequences: list[int] = field(default_factory=list)
    aggregates: list[Aggregate] = field(default_factory=list)

    @property
    def last_sequence(self) -> int:
        return self.sequences[-1] if self.sequences else 0


@dataclass(frozen=True, slots=True)
class Persist:
    """Write the batch inside the open transaction (flush state, append events, outbox rows)."""

    batch: CommitBatch


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit the transaction."""


Step = Invoke | Persist | Commit


def commit_steps(
    aggregates: Callable[[], Iterable[Aggregate]],
    handlers: Handlers,
    *,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
) -> Generator[Step, None, CommitBatch]:
    """Yield the steps of one commit; return the committed batch."""
    batch = CommitBatch()
    dispatched: set[int] = set()
    rounds = 0
    while True:
        fresh: list[tuple[int, Envelope[Any], Aggregate]] = []
        seen_aggregates: set[int] = set()
        for aggregate in aggregates():
            if id(aggregate) in seen_aggregates:
                continue
            seen_aggregates.add(id(aggregate))
            for sequence, envelope in aggregate._pending_list():
                if sequence not in dispatched:
                    fresh.append((sequence, envelope, aggregate))
        if not fresh:
            break
        rounds += 1
        if rounds > max_rounds:
            raise CascadeLimitExceeded(_cycle_message(max_rounds, batch, fresh))
        fresh.sort(key=lambda item: item[0])
        for sequence, envelope, aggregate in fresh:
            dispatched.add(sequence)
            batch.envelopes.append(envelope)
            batch.sequences.append(sequence)
            if not any(a is aggregate for a in batch.aggregates):
                batch.aggregates.append(aggregate)
        for _, envelope, _ in fresh:
            for subscription in handlers.for_type(type(envelope.event), Timing.IN_TRANSACTION):
                yield Invoke(subscription, envelope)
    # Aggregates that changed state without recording anything still need persisting.
    for aggregate in aggregates():
        if not any(a is aggregate for a in batch.aggregates):
            batch.aggregates.append(aggregate)
    yield Persist(batch)
    yield Commit()
    return batch


def _cycle_message(
    max_rounds: int, batch: CommitBatch, fresh: list[tuple[int, Envelope[Any], Aggregate]]
) -> str:
    by_id = {envelope.event_id: envelope for envelope in batch.envelopes}
    chain: list[str] = []
    current: Envelope[Any] | None = fresh[0][1]
    while current is not None and len(chain) < 12:
        chain.append(current.event_type)
        current = by_id.get(current.causation_id) if current.causation_id else None
    chain.reverse()
    return (
        f"in-transaction handlers were still recording new events after {max_rounds} rounds; "
        f"this looks like a cycle. Latest causation chain: {' -> '.join(chain)}. "
        "Nothing was committed. Raise max_rounds= if the cascade is legitimately this deep."
    )
