"""A faster ``__init__`` for the frozen, slotted dataclasses made once per event.

A frozen dataclass's generated ``__init__`` sets each field through ``object.__setattr__``
(its own ``__setattr__`` refuses), which looks the attribute up by name every time: about
2.5 us for an eleven-field :class:`~tidings.core.envelope.Envelope` against 0.6 for a class that
is not frozen. The relay builds several such objects per event it forwards (the envelope, the
handler context, the stored form of the public event), a consumer as many per message, so that
is a few microseconds of every event's path.

:func:`quick_init` replaces the generated ``__init__`` with one of the same signature that
stores each field through its slot's descriptor, bound once: about half the time. The instance
is the same (still frozen, equal, hashable, picklable); only how its slots are first filled
differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class _Missing:
    """No value passed for a field with a default factory."""

    def __repr__(self) -> str:
        return "<factory>"


_MISSING = _Missing()


def quick_init(cls: type[T]) -> type[T]:
    """Give the frozen, slotted dataclass ``cls`` the faster ``__init__`` (see the module).

    Apply it above ``@dataclass(frozen=True, slots=True)``. Classes it cannot reproduce
    exactly (``__post_init__``, init-only or keyword-only fields, fields left out of
    ``__init__``) are refused, so a later change to one of them fails at import, not at run.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__qualname__}: quick_init is for frozen, slotted dataclasses")
    generated = cls.__dict__["__init__"]
    if generated.__code__.co_filename != "<string>":
        raise TypeError(f"{cls.__qualname__}: quick_init would replace its own __init__")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__qualname__}: quick_init does not call __post_init__")
    dataclass: Any = cls
    fields = dataclasses.fields(dataclass)
    if len(fields) != len(dataclass.__dataclass_fields__):
        raise TypeError(f"{cls.__qualname__}: quick_init does not support InitVar fields")
    names: dict[str, Any] = {"_MISSING": _MISSING}
    parameters: list[str] = []
    body: list[str] = []
    for f in fields:
        if not f.init or f.kw_only:
            raise TypeError(f"{cls.__qualname__}.{f.name}: quick_init needs a plain field")
        name = f.name
        names[f"_set_{name}"] = cls.__dict__[name].__set__
        value = name
        if f.default is not dataclasses.MISSING:
            names[f"_default_{name}"] = f.default
            parameters.append(f"{name}=_default_{name}")
        elif f.default_factory is not dataclasses.MISSING:
            names[f"_factory_{name}"] = f.default_factory
            parameters.append(f"{name}=_MISSING")
            value = f"_factory_{name}() if {name} is _MISSING else {name}"
        else:
            parameters.append(name)
        body.append(f"    _set_{name}(self, {value})")
    source = f"def __init__(self, {', '.join(parameters)}):\n" + "\n".join(body) + "\n"
    exec(source, names)  # the source is built above from the class's own field names
    init: Callable[..., None] = names["__init__"]
    init.__qualname__ = generated.__qualname__
    init.__module__ = generated.__module__
    init.__annotations__ = dict(generated.__annotations__)
    init.__doc__ = generated.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses assigning a method
    return cls
