"""``tidings.interpreter``: a long-running process's garbage collector, tuned and restored."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from tidings.interpreter import YOUNG_THRESHOLD, restore_collector, tune_collector


@pytest.fixture
def untouched_collector() -> Iterator[None]:
    """Whatever a test does to the collector is undone afterwards."""
    thresholds, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert frozen_before == 0, "something else froze the heap before this test"


def test_freezes_the_start_up_heap_and_raises_the_young_threshold(
    untouched_collector: None,
) -> None:
    before = gc.get_threshold()
    tuning = tune_collector()
    assert tuning.frozen > 1000  # the interpreter's and the test run's modules, at least
    # At most what was frozen: a frozen object is still freed when the last reference to it
    # goes, and in a full test run threads left by earlier tests may drop some meanwhile.
    assert tuning.frozen * 0.99 <= gc.get_freeze_count() <= tuning.frozen
    assert tuning.previous_thresholds == before
    assert gc.get_threshold() == tuning.thresholds == (YOUNG_THRESHOLD, before[1], before[2])
    assert f"{tuning.frozen:,} start-up objects frozen" in tuning.describe()
    assert f"young threshold {before[0]} -> {YOUNG_THRESHOLD}" in tuning.describe()
    restore_collector(tuning)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_start_up_garbage_is_collected_not_frozen(untouched_collector: None) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it

    collected: list[str] = []
    cycle = Node()
    weakref.finalize(cycle, collected.append, "freed")
    del cycle
    tune_collector()
    assert collected == ["freed"]


def test_a_frozen_object_is_still_freed_when_dropped(untouched_collector: None) -> None:
    class Holder:
        def __init__(self) -> None:
            self.payload = [1, 2, 3]

    freed: list[str] = []
    holder = Holder()  # a tracked object, frozen with the rest
    weakref.finalize(holder, freed.append, "freed")
    tune_collector()
    assert gc.get_freeze_count() > 0
    del holder  # reference counting frees it at once; only cycles would wait for a collection
    assert freed == ["freed"]


def test_a_second_call_freezes_only_what_came_since(untouched_collector: None) -> None:
    first = tune_collector(young_threshold=5000)
    later = [[n] for n in range(100)]
    second = tune_collector(young_threshold=5000)
    total = first.frozen + second.frozen  # at most (see the first test), not always exactly
    assert total * 0.99 <= gc.get_freeze_count() <= total
    assert 100 <= second.frozen < first.frozen
    assert second.previous_thresholds[0] == 5000
    assert later


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10"])
def test_a_bad_threshold_is_refused_before_anything_changes(
    bad: object, untouched_collector: None
) -> None:
    before = gc.get_threshold()
    with pytest.raises((TypeError, ValueError), match="young_threshold"):
        tune_collector(young_threshold=bad)  # type: ignore[arg-type]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
