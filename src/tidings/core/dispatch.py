"""Handlers: who reacts to which event, and *when*.

Every handler is registered with an explicit timing:

* :attr:`Timing.IN_TRANSACTION`: runs inside the unit of work, right before commit. Its effects
  (changes to other aggregates, new events) commit or roll back together with the originating
  change.
* :attr:`Timing.AFTER_COMMIT`: runs later, after the commit, delivered at least once through the
  outbox by the relay. Each after-commit handler is a named *subscriber* with its own position.

Registration never touches the aggregate or the event class::

    handlers = Handlers()

    @handlers.in_transaction(OrderStarted)
    def create_buyer(event: OrderStarted, ctx: HandlerContext) -> None: ...

    @handlers.after_commit(OrderConfirmed, name="email-customer")
    async def email(event: OrderConfirmed) -> None: ...

    handlers.add(OrderCancelled, refund, when=Timing.AFTER_COMMIT)

Handlers take the event, and optionally a second argument, the :class:`HandlerContext` (the
envelope, the unit of work, the delivery id). They may be declared for a base class, or for a
:class:`typing.Protocol`, to receive every matching event type.
"""

from __future__ import annotations

import enum
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from tidings.core.envelope import Envelope
from tidings.core.frozen import quick_init
from tidings.errors import ConfigurationError

if TYPE_CHECKING:
    from tidings.core.unit_of_work import UnitOfWorkBase

H = TypeVar("H", bound=Callable[..., Any])


class Timing(enum.Enum):
    """When a handler runs relative to the commit of the events it handles."""

    IN_TRANSACTION = "in_transaction"
    AFTER_COMMIT = "after_commit"


# Module constant: looking a member up on the Enum class is slower than a global read.
_IN_TRANSACTION = Timing.IN_TRANSACTION


@quick_init
@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler may know besides the event."""

    envelope: Envelope[Any]
    #: The unit of work the handler runs in (in-transaction), or the subscriber's own
    #: transaction (after commit). Load and add aggregates through it.
    uow: UnitOfWorkBase | None
    #: Stable across redeliveries of the same event to the same subscriber: pass it to external
    #: systems as an idempotency key.
    delivery_id: str
    subscriber: str | None = None
    attempt: int = 1

    @property
    def event_id(self) -> UUID:
        return self.envelope.event_id


@dataclass(frozen=True, slots=True)
class Subscription:
    """One registered handler."""

    event_type: type
    handler: Callable[..., Any]
    timing: Timing
    name: str
    wants_context: bool
    is_async: bool
    order: int
    #: A synchronous handler of the event alone: the fast path of in-transaction dispatch.
    direct: bool = False

    def matches(self, concrete: type) -> bool:
        return _matches(concrete, self.event_type)


def handler_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{qualname}"


def _positional_arity(fn: Callable[..., Any]) -> int:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: assume (event,)
        return 1
    count = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return 2
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def _is_protocol(cls: type) -> bool:
    return bool(getattr(cls, "_is_protocol", False))


def _protocol_members(proto: type) -> set[str]:
    members: set[str] = set()
    for klass in proto.__mro__:
        if klass is object or not _is_protocol(klass) or klass.__name__ in ("Protocol", "Generic"):
            continue
        members.update(getattr(klass, "__annotations__", {}))
        # Every public name the protocol defines: methods, but also properties and constants,
        # or a protocol of properties alone would match every event type.
        members.update(name for name in vars(klass) if not name.startswith("_"))
    return members


def _matches(concrete: type, target: type) -> bool:
    if target is object:
        return True
    if _is_protocol(target):
        return all(
            hasattr(concrete, name)
            or name in getattr(concrete, "__dataclass_fields__", {})
            or name in getattr(concrete, "model_fields", {})
            for name in _protocol_members(target)
        )
    return issubclass(concrete, target)


class Handlers:
    """A registry of handlers. Resolution per concrete event type is computed once and cached."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        # One cache per timing, keyed by the concrete class alone: hashing a (type, Timing) key
        # calls Enum.__hash__ in Python, which cost more than the rest of a dispatch.
        self._in_transaction_cache: dict[type, tuple[Subscription, ...]] = {}
        self._after_commit_cache: dict[type, tuple[Subscription, ...]] = {}
        self._lock = threading.Lock()

    # -- registration ------------------------------------------------------------------------

    def add(
        self,
        event_type: type,
        handler: Callable[..., Any],
        *,
        when: Timing,
        name: str | None = None,
    ) -> Subscription:
        """Register ``handler`` for ``event_type`` (and its subclasses / protocol matches)."""
        if not isinstance(when, Timing):
            raise ConfigurationError(
                f"when= must be Timing.IN_TRANSACTION or Timing.AFTER_COMMIT, got {when!r}"
            )
        if not isinstance(event_type, type):
            raise ConfigurationError(f"event_type must be a class, got {event_type!r}")
        if not callable(handler):
            raise ConfigurationError(f"handler for {event_type.__qualname__} is not callable")
        arity = _positional_arity(handler)
        if arity not in (1, 2):
            raise ConfigurationError(
                f"handler {handler_name(handler)} must take (event) or (event, context), "
                f"it takes {arity} positional parameters"
            )
        subscriber_name = name or handler_name(handler)
        is_async = inspect.iscoroutinefunction(handler)
        with self._lock:
            # One subscriber may handle several event types (a saga, a projection), but one
            # name registered twice for the same type is two handlers claiming one position.
            if when is Timing.AFTER_COMMIT and any(
                s.timing is Timing.AFTER_COMMIT
                and s.name == subscriber_name
                and s.event_type is event_type
                for s in self._subscriptions
            ):
                raise ConfigurationError(
                    f"after-commit subscriber {subscriber_name!r} already handles "
                    f"{event_type.__qualname__}: subscriber names key their positions, so give "
                    "each handler its own name= (or one handler per event type per subscriber)"
                )
            subscription = Subscription(
                event_type=event_type,
                handler=handler,
                timing=when,
                name=subscriber_name,
                wants_context=arity == 2,
                is_async=is_async,
                order=len(self._subscriptions),
                direct=arity == 1 and not is_async,
            )
            self._subscriptions.append(subscription)
            self._in_transaction_cache = {}
            self._after_commit_cache = {}
        return subscription

    def in_transaction(self, event_type: type) -> Callable[[H], H]:
        """Decorator: run in the same transaction, right before commit."""

        def register(fn: H) -> H:
            self.add(event_type, fn, when=Timing.IN_TRANSACTION)
            return fn

        return register

    def after_commit(self, event_type: type, *, name: str | None = None) -> Callable[[H], H]:
        """Decorator: run after commit, delivered through the outbox (at least once)."""

        def register(fn: H) -> H:
            self.add(event_type, fn, when=Timing.AFTER_COMMIT, name=name)
            return fn

        return register

    def include(self, other: Handlers) -> None:
        """Add every subscription of ``other`` (compose handlers from several modules)."""
        for sub in other.subscriptions():
            self.add(sub.event_type, sub.handler, when=sub.timing, name=sub.name)

    # -- resolution --------------------------------------------------------------------------

    def subscriptions(self, timing: Timing | None = None) -> list[Subscription]:
        return [s for s in self._subscriptions if timing is None or s.timing is timing]

    def for_type(self, concrete: type, timing: Timing) -> tuple[Subscription, ...]:
        """The subscriptions ``concrete`` events reach at ``timing``, in registration order."""
        cache = (
            self._in_transaction_cache if timing is _IN_TRANSACTION else self._after_commit_cache
        )
        found = cache.get(concrete)
        if found is None:
            found = tuple(
                s for s in self._subscriptions if s.timing is timing and s.matches(concrete)
            )
            cache[concrete] = found
        return found

    def subscribers(self) -> dict[str, list[Subscription]]:
        """After-commit subscribers by name."""
        result: dict[str, list[Subscription]] = {}
        for s in self._subscriptions:
            if s.timing is Timing.AFTER_COMMIT:
                result.setdefault(s.name, []).append(s)
        return result

    def has_after_commit(self, concrete: type) -> bool:
        return bool(self.for_type(concrete, Timing.AFTER_COMMIT))
