"""The aggregate cache on its own (no database): what it keeps, hands out and forgets."""

from __future__ import annotations

import pytest

from tidings.eventsourcing import cache as cache_module
from tidings.eventsourcing.cache import DEFAULT, AggregateCache, cache_option
from tidings.testing.store_contract import ContractAccount


def committed(id: str, deposits: int = 0) -> ContractAccount:
    account = ContractAccount.open(id, "ann")
    for _ in range(deposits):
        account.deposit(1)
    account._committed(account._pending_list()[-1][0])
    return account


def test_every_take_hands_out_a_new_copy() -> None:
    cache = AggregateCache()
    account = committed("a", deposits=2)
    cache.keep([account])
    kept_state = account.state()
    account.deposit(5)  # the caller's object changes after it was kept: not the cache's copy
    taken = cache.take(ContractAccount, "ContractAccount-a")
    again = cache.take(ContractAccount, "ContractAccount-a")
    assert taken is not None and again is not None
    assert len({id(account), id(taken), id(again)}) == 3, "never shared"
    assert taken.state() == again.state() == kept_state
    taken.deposit(1)  # nor does a copy that was handed out change the kept one
    third = cache.take(ContractAccount, "ContractAccount-a")
    assert third is not None and third.state() == kept_state


def test_a_trusting_cache_hands_its_entry_out_once() -> None:
    cache = AggregateCache(fast_forward=False)
    cache.keep([committed("a")])
    assert cache.take(ContractAccount, "ContractAccount-a") is not None
    assert cache.take(ContractAccount, "ContractAccount-a") is None, "back only at commit"


def test_loading_the_kept_version_again_copies_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = AggregateCache()
    cache.keep([committed("a", deposits=1)])
    taken = cache.take(ContractAccount, "ContractAccount-a")
    assert taken is not None
    frozen: list[object] = []
    monkeypatch.setattr(cache_module, "_freeze", lambda aggregate: frozen.append(aggregate))
    cache.loaded(taken)  # a cached load that found nothing newer
    assert frozen == []
    newer = committed("a", deposits=2)
    cache.loaded(newer)  # a load that applied newer events: that state is kept
    assert frozen == [newer]


def test_only_committed_event_sourced_aggregates_are_kept() -> None:
    cache = AggregateCache()
    pending = ContractAccount.open("p", "ann")  # recorded, not committed
    blank = ContractAccount.blank("b")  # nothing stored yet
    cache.keep([pending, blank, object()])  # type: ignore[list-item]
    assert len(cache) == 0


def test_another_class_with_the_same_stream_is_a_miss() -> None:
    class Other(ContractAccount):
        stream_category = "ContractAccount"

    cache = AggregateCache()
    cache.keep([committed("a")])
    assert cache.take(Other, "ContractAccount-a") is None


def test_the_least_recently_kept_go_first() -> None:
    cache = AggregateCache(maxsize=2)
    cache.keep([committed("a"), committed("b")])
    cache.keep([committed("a", deposits=1)])  # a is fresh again
    cache.keep([committed("c")])
    assert len(cache) == 2
    assert cache.take(ContractAccount, "ContractAccount-b") is None
    kept = cache.take(ContractAccount, "ContractAccount-a")
    assert kept is not None and kept.version == 2


def test_discard_and_clear() -> None:
    cache = AggregateCache()
    cache.keep([committed("a"), committed("b")])
    cache.discard("ContractAccount-a")
    assert cache.take(ContractAccount, "ContractAccount-a") is None
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize("size", [0, -1, 1.5, True, "10"])
def test_bad_sizes_are_refused(size: object) -> None:
    with pytest.raises(ValueError, match="maxsize"):
        AggregateCache(size)  # type: ignore[arg-type]


def test_the_cache_option() -> None:
    made = cache_option(DEFAULT)
    assert isinstance(made, AggregateCache) and made.fast_forward
    assert cache_option(None) is None
    mine = AggregateCache(5)
    assert cache_option(mine) is mine
    with pytest.raises(TypeError, match="AggregateCache or None"):
        cache_option({})  # type: ignore[arg-type]


def test_an_aggregate_pickle_cannot_name_is_deep_copied_instead() -> None:
    class Local(ContractAccount):  # defined in a function: pickle cannot find it by name
        stream_category = "Local"

    account = Local.open("l", "ann")
    account._committed(account._pending_list()[-1][0])
    cache = AggregateCache()
    cache.keep([account])
    taken = cache.take(Local, "Local-l")
    assert taken is not None and taken is not account and taken.state() == account.state()
    again = cache.take(Local, "Local-l")
    assert again is not None and again is not taken and again.state() == account.state()
