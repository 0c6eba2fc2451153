"""The event registry: type name (and aliases) to class, and the upcaster chains between versions.

One process-wide :data:`default_registry` is filled by :func:`tidings.event`; applications that
want isolation (tests, several bounded contexts in one process) can build their own
:class:`EventRegistry` and register classes explicitly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tidings.core.events import EventSpec, spec_of
from tidings.errors import EventDefinitionError, UnknownEventType

#: A pure function turning the JSON object of version N into the JSON object of version N+1.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class EventRegistry:
    """Maps stored type names to event classes, and holds upcasters."""

    def __init__(self) -> None:
        self._by_name: dict[str, EventSpec] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._lock = threading.Lock()

    def register(self, cls: type) -> EventSpec:
        spec = spec_of(cls)
        with self._lock:
            for name in (spec.name, *spec.aliases):
                existing = self._by_name.get(name)
                if existing is not None and not _same_declaration(existing.cls, cls):
                    raise EventDefinitionError(
                        f"event type name {name!r} is already used by "
                        f"{existing.cls.__module__}.{existing.cls.__qualname__}; "
                        f"choose another name= for {cls.__module__}.{cls.__qualname__}"
                    )
            for name in (spec.name, *spec.aliases):
                self._by_name[name] = spec
        return spec

    def spec(self, type_name: str) -> EventSpec:
        try:
            return self._by_name[type_name]
        except KeyError:
            raise UnknownEventType(type_name) from None

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._by_name

    def names(self) -> list[str]:
        return sorted({spec.name for spec in self._by_name.values()})

    def specs(self) -> list[EventSpec]:
        return sorted({id(s): s for s in self._by_name.values()}.values(), key=lambda s: s.name)

    def add_upcaster(self, type_name: str, from_version: int, fn: Upcaster) -> None:
        key = (type_name, from_version)
        if key in self._upcasters:
            raise EventDefinitionError(
                f"an upcaster for {type_name!r} from version {from_version} is already registered"
            )
        self._upcasters[key] = fn

    def upcaster(self, type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator form of :meth:`add_upcaster`."""

        def wrap(fn: Upcaster) -> Upcaster:
            self.add_upcaster(type_name, from_version, fn)
            return fn

        return wrap

    def upcaster_for(self, type_name: str, from_version: int) -> Upcaster | None:
        return self._upcasters.get((type_name, from_version))


def _same_declaration(a: type, b: type) -> bool:
    # Re-running a module (reloads, notebooks, tests defining the same class twice) re-declares
    # the same event; only a *different* class claiming the name is a conflict.
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


default_registry = EventRegistry()
