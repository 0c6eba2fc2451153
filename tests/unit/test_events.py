"""Declaring events: immutable, slotted, named stably, versioned, and clashes caught early."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pydantic
import pytest

from tidings import (
    EventDefinitionError,
    EventRegistry,
    UnknownEventType,
    default_registry,
    event,
    spec_of,
)


@event
class ModuleLevelDefaultName:
    value: int


@event(name="events-test.Renamed", version=3, aliases=("events-test.OldName",))
class RenamedInCode:
    value: int


def test_plain_class_becomes_frozen_slotted_dataclass() -> None:
    instance = ModuleLevelDefaultName(value=1)
    assert dataclasses.is_dataclass(instance)
    assert "__slots__" in vars(ModuleLevelDefaultName)
    assert not hasattr(instance, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        instance.value = 2  # type: ignore[misc]


def test_default_type_name_is_the_qualified_class_name_and_version_one() -> None:
    spec = spec_of(ModuleLevelDefaultName)
    assert spec.name == "ModuleLevelDefaultName"
    assert spec.version == 1
    assert spec.aliases == ()
    assert spec.cls is ModuleLevelDefaultName
    assert not spec.is_pydantic


def test_explicit_name_version_and_aliases_are_registered() -> None:
    spec = spec_of(RenamedInCode)
    assert (spec.name, spec.version, spec.aliases) == (
        "events-test.Renamed",
        3,
        ("events-test.OldName",),
    )
    # The stored name, not the Python name, is what the global registry resolves.
    assert default_registry.spec("events-test.Renamed").cls is RenamedInCode
    assert default_registry.spec("events-test.OldName").cls is RenamedInCode
    assert "RenamedInCode" not in default_registry


@pytest.mark.parametrize("version", [0, -1, True, 1.5, "2"])
def test_version_must_be_a_positive_integer(version: object) -> None:
    with pytest.raises(EventDefinitionError, match="version must be an integer >= 1"):

        @event(name="events-test.BadVersion", version=version)  # type: ignore[arg-type]
        class BadVersion:
            value: int


def test_empty_name_is_rejected() -> None:
    with pytest.raises(EventDefinitionError, match="non-empty string"):

        @event(name="")
        class Nameless:
            value: int


def test_class_defined_in_a_function_needs_an_explicit_name() -> None:
    with pytest.raises(EventDefinitionError, match="explicit name="):

        @event
        class Local:
            value: int

    @event(name="events-test.LocalWithName")
    class LocalWithName:
        value: int

    assert spec_of(LocalWithName).name == "events-test.LocalWithName"


def test_a_different_class_claiming_a_taken_name_is_rejected() -> None:
    with pytest.raises(EventDefinitionError, match=r"'events-test\.Renamed' is already used"):

        @event(name="events-test.Renamed")
        class Impostor:
            value: int


def test_an_alias_clashing_with_a_taken_name_is_rejected() -> None:
    with pytest.raises(EventDefinitionError, match="already used"):

        @event(name="events-test.Fresh", aliases=("ModuleLevelDefaultName",))
        class AliasThief:
            value: int

    # The failed declaration left nothing behind under its own name either.
    assert "events-test.Fresh" not in default_registry


def test_redeclaring_the_same_class_is_not_a_clash() -> None:
    # A module re-run (reload, notebook) declares the same module + qualname again.
    registry = EventRegistry()
    registry.register(ModuleLevelDefaultName)
    registry.register(ModuleLevelDefaultName)
    assert registry.names() == ["ModuleLevelDefaultName"]


def test_private_registry_is_isolated_from_the_default_one() -> None:
    registry = EventRegistry()
    with pytest.raises(UnknownEventType, match=r"events-test\.Renamed"):
        registry.spec("events-test.Renamed")
    registry.register(RenamedInCode)
    assert registry.spec("events-test.OldName").cls is RenamedInCode
    assert [spec.cls for spec in registry.specs()] == [RenamedInCode]


def test_existing_frozen_dataclass_is_kept_as_is() -> None:
    @event(name="events-test.AlreadyFrozen")
    @dataclass(frozen=True, slots=True)
    class AlreadyFrozen:
        value: int

    assert spec_of(AlreadyFrozen).cls is AlreadyFrozen


def test_mutable_dataclass_is_rejected() -> None:
    with pytest.raises(EventDefinitionError, match="must be frozen"):

        @event(name="events-test.Mutable")
        @dataclass
        class Mutable:
            value: int


def test_subclass_of_an_event_is_an_event_of_its_own() -> None:
    @event(name="events-test.Child")
    class Child(ModuleLevelDefaultName):
        extra: str

    child = Child(value=1, extra="x")
    assert spec_of(Child).name == "events-test.Child"
    assert isinstance(child, ModuleLevelDefaultName)
    with pytest.raises(dataclasses.FrozenInstanceError):
        child.extra = "y"  # type: ignore[misc]


def test_undeclared_class_has_no_spec() -> None:
    class NotAnEvent:
        pass

    with pytest.raises(EventDefinitionError, match="not a declared event"):
        spec_of(NotAnEvent)
    # A subclass of an event does not silently inherit its parent's type name.
    with pytest.raises(EventDefinitionError, match="not a declared event"):
        spec_of(type("Undeclared", (ModuleLevelDefaultName,), {}))


def test_frozen_pydantic_model_is_accepted() -> None:
    @event(name="events-test.PydanticFrozen")
    class PydanticFrozen(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(frozen=True)
        value: int

    spec = spec_of(PydanticFrozen)
    assert spec.is_pydantic
    assert spec.cls is PydanticFrozen


def test_mutable_pydantic_model_is_rejected() -> None:
    with pytest.raises(EventDefinitionError, match="pydantic events must be immutable"):

        @event(name="events-test.PydanticMutable")
        class PydanticMutable(pydantic.BaseModel):
            value: int
