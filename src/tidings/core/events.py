"""Declaring events: a stable type name, a schema version, and immutability.

An event class is declared with :func:`event`::

    @event                                   # type name "OrderStarted", version 1
    class OrderStarted:
        order_id: UUID
        buyer_id: str

    @event(name="ordering.OrderShipped", version=2, aliases=("OrderDispatched",))
    class OrderShipped: ...

Plain classes become frozen, slotted dataclasses. Pydantic models are accepted as they are (make
them ``frozen=True`` yourself; tidings checks it). The type name, not the Python class name, is
what is stored, so renaming a class never orphans stored events: keep the old name in ``name=``,
or list it in ``aliases=`` so old rows still decode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, dataclass_transform, overload

from tidings.errors import EventDefinitionError

T = TypeVar("T", bound=type)

_META_ATTR = "__tidings_event__"


@dataclass(frozen=True, slots=True)
class EventSpec:
    """What tidings knows about an event class."""

    name: str
    version: int
    aliases: tuple[str, ...]
    cls: type
    is_pydantic: bool


def _is_pydantic_model(cls: type) -> bool:
    return any(
        base.__module__.startswith("pydantic") and base.__name__ == "BaseModel"
        for base in cls.__mro__
    )


def _declare(cls: T, name: str | None, version: int, aliases: tuple[str, ...]) -> T:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise EventDefinitionError(
            f"{cls.__qualname__}: version must be an integer >= 1, got {version!r}"
        )
    type_name = name if name is not None else cls.__qualname__
    if not type_name or not isinstance(type_name, str):
        raise EventDefinitionError(f"{cls.__qualname__}: name must be a non-empty string")
    if "<locals>" in type_name:
        raise EventDefinitionError(
            f"{cls.__qualname__}: classes defined inside functions need an explicit name="
        )
    pydantic = _is_pydantic_model(cls)
    if pydantic:
        config: Any = getattr(cls, "model_config", {})
        if not config.get("frozen", False):
            raise EventDefinitionError(
                f"{cls.__qualname__}: pydantic events must be immutable; "
                "set model_config = ConfigDict(frozen=True)"
            )
        result: type = cls
    elif "__dataclass_fields__" in cls.__dict__:
        # Already a dataclass in its own right (not merely inheriting from one).
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        if not params.frozen:
            raise EventDefinitionError(
                f"{cls.__qualname__}: event dataclasses must be frozen (@dataclass(frozen=True))"
            )
        result = cls
    else:
        result = dataclass(frozen=True, slots=True)(cls)
    setattr(
        result,
        _META_ATTR,
        EventSpec(
            name=type_name,
            version=version,
            aliases=tuple(aliases),
            cls=result,
            is_pydantic=pydantic,
        ),
    )
    from tidings.core.registry import default_registry

    default_registry.register(result)
    return result  # type: ignore[return-value]


@overload
def event(cls: T, /) -> T: ...


@overload
def event(
    *, name: str | None = None, version: int = 1, aliases: tuple[str, ...] = ()
) -> Callable[[T], T]: ...


@dataclass_transform(frozen_default=True)
def event(
    cls: T | None = None,
    /,
    *,
    name: str | None = None,
    version: int = 1,
    aliases: tuple[str, ...] = (),
) -> T | Callable[[T], T]:
    """Declare an event class (see the module docstring)."""
    if cls is not None:
        return _declare(cls, None, 1, ())

    def wrap(inner: T) -> T:
        return _declare(inner, name, version, aliases)

    return wrap


def spec_of(cls: type) -> EventSpec:
    """The :class:`EventSpec` of an event class; a clear error if it was never declared."""
    spec = cls.__dict__.get(_META_ATTR) if isinstance(cls, type) else None
    if spec is None:
        raise EventDefinitionError(
            f"{getattr(cls, '__qualname__', cls)!r} is not a declared event: "
            "decorate the class with @tidings.event"
        )
    return spec  # type: ignore[no-any-return]


def is_event_class(cls: object) -> bool:
    return isinstance(cls, type) and _META_ATTR in cls.__dict__
