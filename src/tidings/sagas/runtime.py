"""What handling one message means for a saga, decided without I/O.

:func:`run_saga` takes the saga class, the message, and the instance as stored (or None), and
returns a :class:`SagaOutcome`: the new state, the commands to send, the timeouts to schedule or
cancel, and whether the saga completed. Stores (SQL, memory) persist the outcome in one
transaction; they never decide anything themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from tidings.core.envelope import Envelope
from tidings.errors import ConfigurationError, TidingsError
from tidings.sagas.definition import Route, Saga


class SagaStateError(TidingsError):
    """Stored saga state could not be read back into the saga's state type."""


@dataclass(frozen=True, slots=True)
class StoredSaga:
    """A saga instance as persisted."""

    key: str
    state: bytes
    version: int
    completed: bool


@dataclass(frozen=True, slots=True)
class ScheduledTimeout:
    message: object
    due_at: datetime


@dataclass(slots=True)
class SagaOutcome:
    """Everything one message decided. ``handled`` is False when the message was ignored."""

    saga: str
    key: str
    handled: bool
    reason: str = ""
    state: bytes = b""
    expected_version: int = 0  # the stored version the update must find (0: a new instance)
    completed: bool = False
    commands: list[object] = field(default_factory=list)
    timeouts: list[ScheduledTimeout] = field(default_factory=list)
    cancel_timeouts: bool = False


_encoder = msgspec.json.Encoder()


def route_for_type(saga_cls: type[Saga[Any]], message_type: type) -> Route | None:
    """The route for a message type: its own, else the nearest base class's."""
    for klass in message_type.__mro__:
        route = saga_cls.routes.get(klass)
        if route is not None:
            return route
    return None


def route_for(saga_cls: type[Saga[Any]], message: object) -> Route | None:
    return route_for_type(saga_cls, type(message))


def key_for(saga_cls: type[Saga[Any]], message: object) -> str | None:
    """The correlation key of an event for this saga (None if the saga does not handle it)."""
    route = route_for(saga_cls, message)
    if route is None or route.key_of is None:
        return None
    key = route.key_of(message)
    if key is None or key == "":
        raise ConfigurationError(
            f"saga {saga_cls.name}: {type(message).__qualname__} has no correlation value"
        )
    return str(key)


def encode_state(state: object) -> bytes:
    return _encoder.encode(state)


def decode_state(saga_cls: type[Saga[Any]], stored: StoredSaga) -> Any:
    try:
        return msgspec.json.decode(stored.state, type=saga_cls.state_type)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise SagaStateError(
            f"saga {saga_cls.name} instance {stored.key!r} (version {stored.version}): "
            f"stored state does not fit {saga_cls.state_type.__qualname__}: {exc}"
        ) from exc


def run_saga(
    saga_cls: type[Saga[Any]],
    message: object,
    stored: StoredSaga | None,
    *,
    now: datetime,
    key: str | None = None,
    envelope: Envelope[Any] | None = None,
) -> SagaOutcome:
    """Handle ``message`` (an event, or a timeout when ``key`` is given)."""
    route = route_for(saga_cls, message)
    if route is None:
        raise ConfigurationError(
            f"saga {saga_cls.name} does not handle {type(message).__qualname__}"
        )
    instance_key = key if key is not None else key_for(saga_cls, message)
    if instance_key is None:
        raise ConfigurationError(f"saga {saga_cls.name}: timeouts need the instance key")
    outcome = SagaOutcome(saga=saga_cls.name, key=instance_key, handled=False)
    if stored is not None and stored.completed:
        outcome.reason = "the saga instance has completed"
        return outcome
    if stored is None and not route.starts:
        outcome.reason = f"no instance, and {type(message).__qualname__} does not start one"
        return outcome
    state = decode_state(saga_cls, stored) if stored is not None else saga_cls.state_type()
    saga = saga_cls(instance_key, state, envelope=envelope, now=now)
    getattr(saga, route.method_name)(message)
    outcome.handled = True
    outcome.state = encode_state(saga.state)
    outcome.expected_version = stored.version if stored is not None else 0
    outcome.completed = saga._completed
    outcome.commands = list(saga._commands)
    outcome.cancel_timeouts = saga._cancel_timeouts
    outcome.timeouts = [
        ScheduledTimeout(
            request.message,
            request.due_at if request.due_at is not None else now + request.after,  # type: ignore[operator]
        )
        for request in saga._timeouts
    ]
    return outcome
