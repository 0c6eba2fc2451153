"""quick_init: the same instances as the dataclass's own __init__, built faster."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from dataclasses import InitVar, dataclass, field
from typing import Any

import pytest

from tidings.brokers.port import Delivery
from tidings.core.dispatch import HandlerContext
from tidings.core.envelope import Envelope
from tidings.core.frozen import quick_init
from tidings.core.messages import StoredEvent


@dataclass(frozen=True, slots=True)
class Plain:
    a: int
    b: str | None
    c: int = 3
    tags: dict[str, str] = field(default_factory=dict)


@quick_init
@dataclass(frozen=True, slots=True)
class Quick:
    a: int
    b: str | None
    c: int = 3
    tags: dict[str, str] = field(default_factory=dict)


def fields_of(value: Any) -> tuple[Any, ...]:
    return dataclasses.astuple(value)


def test_same_signature_as_the_generated_init() -> None:
    assert str(inspect.signature(Quick)) == str(inspect.signature(Plain))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1, "x"), {}),
        ((1, None, 5), {}),
        ((1, "x", 5, {"k": "v"}), {}),
        ((), {"a": 1, "b": "x", "tags": {"k": "v"}}),
        ((1,), {"b": None, "c": 0}),
    ],
)
def test_same_instances_as_the_generated_init(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    assert fields_of(Quick(*args, **kwargs)) == fields_of(Plain(*args, **kwargs))


def test_still_frozen_equal_hashable_copyable_and_picklable() -> None:
    value = Quick(1, "x", tags={"k": "v"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.a = 2  # type: ignore[misc]
    assert value == Quick(1, "x", tags={"k": "v"})
    assert hash(Quick(1, "x", 3, None)) == hash(Quick(1, "x", 3, None))  # type: ignore[arg-type]
    assert pickle.loads(pickle.dumps(value)) == value
    assert copy.copy(value) == value
    assert dataclasses.replace(value, c=9) == Quick(1, "x", 9, {"k": "v"})


def test_each_instance_gets_its_own_default_from_the_factory() -> None:
    first, second = Quick(1, "x"), Quick(2, "y")
    assert first.tags == {} and first.tags is not second.tags


def test_wrong_arguments_are_refused_as_by_the_generated_init() -> None:
    for call in (
        lambda: Quick(1),  # type: ignore[call-arg]
        lambda: Quick(1, "x", 3, {}, 5),  # type: ignore[call-arg]
        lambda: Quick(1, "x", d=4),  # type: ignore[call-arg]
        lambda: Quick(1, "x", a=4),  # type: ignore[misc]
    ):
        with pytest.raises(TypeError):
            call()


def test_classes_it_cannot_reproduce_are_refused() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True)
    class KeywordOnly:
        a: int = field(kw_only=True)

    @dataclass(frozen=True, slots=True)
    class LeftOut:
        a: int = field(init=False, default=1)

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        b: InitVar[int]

    @dataclass(frozen=True, slots=True)
    class OwnInit:
        a: int

        def __init__(self, a: str) -> None:
            object.__setattr__(self, "a", int(a))

    for cls in (NoSlots, NotFrozen, PostInit, KeywordOnly, LeftOut, WithInitVar, OwnInit):
        with pytest.raises(TypeError, match=cls.__qualname__):
            quick_init(cls)


@pytest.mark.parametrize("cls", [Envelope, StoredEvent, HandlerContext, Delivery])
def test_the_classes_made_once_per_event_use_it(cls: type) -> None:
    names = cls.__init__.__code__.co_names  # type: ignore[misc]
    assert all(f"_set_{f.name}" in names for f in dataclasses.fields(cls)), names
