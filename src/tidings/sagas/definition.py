"""Declaring a saga.

A saga reacts to events of *one conversation*: every message it handles is mapped to the
saga instance's key (the *correlation value*, e.g. the order id). Its state is a dataclass that
tidings persists between messages::

    @dataclass
    class FulfilmentState:
        paid: bool = False
        reserved: list[str] = field(default_factory=list)

    class OrderFulfilment(Saga[FulfilmentState]):
        name = "order-fulfilment"           # stored: never rename without migrating
        state_type = FulfilmentState

        @starts(OrderConfirmed, by="order_id")
        def confirmed(self, event: OrderConfirmed) -> None:
            self.send(AuthorizePayment(order_id=event.order_id))
            self.schedule(PaymentOverdue(order_id=event.order_id), after=timedelta(minutes=15))

        @handles(PaymentFailed, by="order_id")
        def payment_failed(self, event: PaymentFailed) -> None:
            self.send(CancelOrder(order_id=event.order_id))   # compensate
            self.complete()

        @on_timeout(PaymentOverdue)
        def overdue(self, timeout: PaymentOverdue) -> None: ...

Handlers mutate ``self.state`` and call ``send`` / ``schedule`` / ``cancel_timeouts`` /
``complete``. They must not do I/O: everything they decide is carried out by the runtime, inside
one transaction with the saga's state and its dedup record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar

from tidings.core.envelope import Envelope
from tidings.errors import ConfigurationError

S = TypeVar("S")
F = TypeVar("F", bound=Callable[..., None])

KeyOf = Callable[[Any], object]


@dataclass(frozen=True, slots=True)
class Route:
    """How one message type reaches a saga method."""

    message_type: type
    method_name: str
    key_of: KeyOf | None  # None for timeouts: they carry their saga's key
    starts: bool
    is_timeout: bool


def _key_function(by: str | KeyOf, message_type: type) -> KeyOf:
    if callable(by):
        return by
    if not isinstance(by, str) or not by:
        raise ConfigurationError(
            f"by= for {message_type.__qualname__} must be an attribute name or a function"
        )

    def key_of(message: Any) -> object:
        return getattr(message, by)

    return key_of


def _mark(message_type: type, *, by: str | KeyOf | None, starts: bool, timeout: bool) -> Any:
    if not isinstance(message_type, type):
        raise ConfigurationError(f"expected a message class, got {message_type!r}")
    key_of = _key_function(by, message_type) if by is not None else None

    def mark(fn: F) -> F:
        routes: list[tuple[type, KeyOf | None, bool, bool]] = list(
            getattr(fn, "__tidings_saga_routes__", [])
        )
        routes.append((message_type, key_of, starts, timeout))
        fn.__tidings_saga_routes__ = routes  # type: ignore[attr-defined]
        return fn

    return mark


def starts(message_type: type, *, by: str | KeyOf) -> Callable[[F], F]:
    """This method handles ``message_type`` and may start a new saga instance.

    ``by`` names the attribute holding the correlation value, or is a function of the message.
    """
    return _mark(message_type, by=by, starts=True, timeout=False)  # type: ignore[no-any-return]


def handles(message_type: type, *, by: str | KeyOf) -> Callable[[F], F]:
    """This method handles ``message_type`` for an *existing* instance (others are ignored)."""
    return _mark(message_type, by=by, starts=False, timeout=False)  # type: ignore[no-any-return]


def on_timeout(message_type: type) -> Callable[[F], F]:
    """This method handles a timeout the saga scheduled with :meth:`Saga.schedule`."""
    return _mark(message_type, by=None, starts=False, timeout=True)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class TimeoutRequest:
    message: object
    due_at: datetime | None
    after: timedelta | None


class Saga(Generic[S]):
    """Base class of sagas. Subclasses set ``name`` and ``state_type`` and route messages."""

    name: ClassVar[str]
    state_type: ClassVar[type]
    routes: ClassVar[dict[type, Route]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        routes: dict[type, Route] = {}
        for klass in reversed(cls.__mro__):
            for attr_name, attr in vars(klass).items():
                for message_type, key_of, is_start, is_timeout in getattr(
                    attr, "__tidings_saga_routes__", []
                ):
                    if message_type in routes and routes[message_type].method_name != attr_name:
                        raise ConfigurationError(
                            f"saga {cls.__qualname__}: {message_type.__qualname__} is routed to "
                            f"both {routes[message_type].method_name} and {attr_name}"
                        )
                    routes[message_type] = Route(
                        message_type, attr_name, key_of, is_start, is_timeout
                    )
        cls.routes = routes

    def __init__(
        self, key: str, state: S, *, envelope: Envelope[Any] | None, now: datetime
    ) -> None:
        self.key = key
        self.state = state
        #: The envelope of the event being handled (None for timeouts).
        self.envelope = envelope
        #: The current time as the runtime's clock tells it (use this, never datetime.now()).
        self.now = now
        self._commands: list[object] = []
        self._timeouts: list[TimeoutRequest] = []
        self._cancel_timeouts = False
        self._completed = False

    def send(self, command: object) -> None:
        """Send a command; it is stored with the saga's state, in the same transaction."""
        self._commands.append(command)

    def schedule(
        self, message: object, *, at: datetime | None = None, after: timedelta | None = None
    ) -> None:
        """Ask to be woken with ``message`` at a time (durable; survives restarts)."""
        if (at is None) == (after is None):
            raise ConfigurationError("schedule() needs exactly one of at= or after=")
        if at is not None and at.tzinfo is None:
            raise ConfigurationError("schedule(at=...) needs a timezone-aware datetime")
        self._timeouts.append(TimeoutRequest(message, at, after))

    def cancel_timeouts(self) -> None:
        """Drop every timeout this instance has pending (e.g. the awaited reply arrived)."""
        self._cancel_timeouts = True
        self._timeouts.clear()

    def complete(self) -> None:
        """The conversation is over: later messages for this key are ignored; timeouts dropped."""
        self._completed = True
        self.cancel_timeouts()
