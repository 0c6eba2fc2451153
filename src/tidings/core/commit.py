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

import operator
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tidings.core.aggregate import Aggregate
from tidings.core.dispatch import Handlers, Subscription, Timing
from tidings.core.envelope import Envelope
from tidings.errors import CascadeLimitExceeded

DEFAULT_MAX_ROUNDS = 100

_IN_TRANSACTION = Timing.IN_TRANSACTION  # a global read is cheaper than an Enum member lookup
_sequence_of = operator.itemgetter(0)


class Dispatch(NamedTuple):
    """Run the in-transaction handlers of one round: event by event in recording order.

    ``subscriptions[i]`` are the handlers of ``envelopes[i]``, in registration order. One step
    per round, in two parallel lists, so the hot path allocates no object per event (object
    allocations are what trigger the garbage collector; see ``bench/dispatch.py``). Events
    recorded by these handlers are picked up by the next round either way.
    """

    envelopes: list[Envelope[Any]]
    subscriptions: list[tuple[Subscription, ...]]


@dataclass(slots=True)
class CommitBatch:
    """Everything one commit writes: events in recording order, and the aggregates involved."""

    envelopes: list[Envelope[Any]] = field(default_factory=list)
    #: Sequence number of each envelope, parallel to ``envelopes``.
    sequences: list[int] = field(default_factory=list)
    aggregates: list[Aggregate] = field(default_factory=list)

    @property
    def last_sequence(self) -> int:
        # The maximum, not the last: an aggregate that joins in a later round may bring
        # events recorded before the commit began, so later rounds can hold smaller numbers.
        return max(self.sequences, default=0)

    def mark_committed(self) -> None:
        """Tell each aggregate in the batch that its events up to this batch are committed."""
        last_sequence = self.last_sequence  # a max over the batch: once, not per aggregate
        for aggregate in self.aggregates:
            aggregate._committed(last_sequence)


@dataclass(frozen=True, slots=True)
class Persist:
    """Write the batch inside the open transaction (flush state, append events, outbox rows)."""

    batch: CommitBatch


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit the transaction."""


Step = Dispatch | Persist | Commit


def commit_steps(
    aggregates: Callable[[], Iterable[Aggregate]],
    handlers: Handlers,
    *,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
) -> Generator[Step, None, CommitBatch]:
    """Yield the steps of one commit; return the committed batch."""
    batch = CommitBatch()
    dispatched: set[int] = set()
    in_batch: set[int] = set()  # ids of batch.aggregates, to keep membership O(1)
    rounds = 0
    while True:
        # The aggregates' own (sequence, envelope) items, not new tuples: see Dispatch.
        fresh: list[tuple[int, Envelope[Any]]] = []
        # Aggregates not in the batch yet, keyed by their first fresh sequence.
        joining: list[tuple[int, Aggregate]] = []
        seen_aggregates: set[int] = set()
        for aggregate in aggregates():
            if id(aggregate) in seen_aggregates:
                continue
            seen_aggregates.add(id(aggregate))
            first = len(fresh)
            for item in aggregate._pending_list():
                if item[0] not in dispatched:
                    fresh.append(item)
            if len(fresh) > first and id(aggregate) not in in_batch:
                joining.append((fresh[first][0], aggregate))
        if not fresh:
            break
        rounds += 1
        if rounds > max_rounds:
            raise CascadeLimitExceeded(_cycle_message(max_rounds, batch, fresh))
        fresh.sort(key=_sequence_of)
        sequences = [item[0] for item in fresh]
        envelopes = [item[1] for item in fresh]
        dispatched.update(sequences)
        batch.sequences.extend(sequences)
        batch.envelopes.extend(envelopes)
        # In order of first appearance in the batch, as the events are.
        joining.sort(key=_sequence_of)
        for _, aggregate in joining:
            in_batch.add(id(aggregate))
            batch.aggregates.append(aggregate)
        step = plan_round(envelopes, handlers)
        if step.envelopes:
            yield step
    # Aggregates that changed state without recording anything still need persisting.
    for aggregate in aggregates():
        if id(aggregate) not in in_batch:
            in_batch.add(id(aggregate))
            batch.aggregates.append(aggregate)
    yield Persist(batch)
    yield Commit()
    return batch


def plan_round(envelopes: list[Envelope[Any]], handlers: Handlers) -> Dispatch:
    """The events of a round that reach in-transaction handlers, with those handlers.

    The per-event hot path of a commit (``bench/dispatch.py`` measures it): it reads the
    resolution cache of :meth:`Handlers.for_type` directly and only calls it on a miss.
    """
    cache = handlers._in_transaction_cache
    targets: list[Envelope[Any]] = []
    reached: list[tuple[Subscription, ...]] = []
    for envelope in envelopes:
        kind = type(envelope.event)
        subscriptions = cache.get(kind)
        if subscriptions is None:
            subscriptions = handlers.for_type(kind, _IN_TRANSACTION)
        if subscriptions:
            targets.append(envelope)
            reached.append(subscriptions)
    return Dispatch(targets, reached)


def _cycle_message(
    max_rounds: int, batch: CommitBatch, fresh: list[tuple[int, Envelope[Any]]]
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
