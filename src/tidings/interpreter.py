"""The interpreter of a long-running tidings process: its garbage collector.

A relay or a worker process allocates a handful of objects per event (rows, envelopes, messages)
that live for one batch, on top of a large heap made at start-up (modules, SQLAlchemy's
metadata and statement caches, the broker clients) that lives as long as the process. CPython's
cyclic collector walks that start-up heap again in every full collection, although none of it
ever becomes garbage, and runs a young collection every 700 net allocations. In
``bench/brokers.py`` a full collection of a NATS consumer process took about 45 ms and came
every 8,000 events or so, and the collector as a whole was an eighth of the consumer's CPU.

:func:`tune_collector` does what long-running Python services commonly do once they have
started (``gc.freeze`` is the standard library's tool for exactly this):

* collects once, so that start-up garbage is freed rather than kept;
* freezes what is left (``gc.freeze``): the start-up heap moves to a permanent generation that
  collections no longer walk; it is still freed normally when no longer referenced, only a
  reference cycle among frozen objects would be kept;
* raises the young generation's threshold (700 by default): short-lived batch objects are
  freed by reference counting long before a collection would look at them, so fewer young
  collections do the same work.

``tidings relay`` and ``tidings worker`` call it once the application is loaded
(``--no-gc-tuning`` turns that off); an application that runs a :class:`~tidings.outbox.Relay`
or a :class:`~tidings.brokers.worker.Worker` in a process of its own can call it the same way,
after its start-up and before the work begins. A process that keeps creating and dropping
long-lived structures (a web application reloading modules, say) is better left as it is.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

#: The young generation's threshold set by :func:`tune_collector` (CPython's default is 700).
YOUNG_THRESHOLD = 10_000


@dataclass(frozen=True, slots=True)
class CollectorTuning:
    """What :func:`tune_collector` did, to log or to undo (:func:`restore_collector`)."""

    #: Objects moved to the permanent generation by this call.
    frozen: int
    #: The thresholds before the call, and after it.
    previous_thresholds: tuple[int, int, int]
    thresholds: tuple[int, int, int]

    def describe(self) -> str:
        return (
            f"garbage collector tuned: {self.frozen:,} start-up objects frozen, young threshold"
            f" {self.previous_thresholds[0]} -> {self.thresholds[0]}"
        )


def tune_collector(*, young_threshold: int = YOUNG_THRESHOLD) -> CollectorTuning:
    """Collect, freeze the start-up heap, raise the young threshold (see the module docstring).

    Call it once the process has started (application loaded, connections open), before its
    long-running work. Calling it again freezes what was allocated since.
    """
    if not isinstance(young_threshold, int) or isinstance(young_threshold, bool):
        raise TypeError(f"young_threshold must be an int, got {young_threshold!r}")
    if young_threshold < 1:
        raise ValueError(f"young_threshold must be >= 1, got {young_threshold}")
    previous = gc.get_threshold()
    gc.collect()
    before = gc.get_freeze_count()
    gc.freeze()
    gc.set_threshold(young_threshold, previous[1], previous[2])
    return CollectorTuning(
        frozen=gc.get_freeze_count() - before,
        previous_thresholds=previous,
        thresholds=gc.get_threshold(),
    )


def restore_collector(tuning: CollectorTuning) -> None:
    """Undo :func:`tune_collector`: thresholds back, frozen objects collectable again (all of
    them: ``gc.unfreeze`` cannot tell which call froze what)."""
    gc.set_threshold(*tuning.previous_thresholds)
    gc.unfreeze()
