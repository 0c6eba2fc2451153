"""Registering handlers: explicit timing, any callable shape, base classes and protocols."""

from __future__ import annotations

from typing import Any, Protocol

import pytest

from tidings import ConfigurationError, HandlerContext, Handlers, Timing, event


@event(name="dispatch-test.Shipped")
class Shipped:
    order_id: str


@event(name="dispatch-test.ExpressShipped")
class ExpressShipped(Shipped):
    courier: str


@event(name="dispatch-test.Refunded")
class Refunded:
    amount: int


class HasOrderId(Protocol):
    order_id: str


@event(name="dispatch-test.Cancelled")
class Cancelled:
    order_id: str
    reason: str


def noop(event: object) -> None:
    pass


def test_decorator_and_explicit_add_register_in_order() -> None:
    handlers = Handlers()

    @handlers.in_transaction(Shipped)
    def first(event: Shipped) -> None: ...

    def second(event: Shipped, ctx: HandlerContext) -> None: ...

    handlers.add(Shipped, second, when=Timing.IN_TRANSACTION)

    @handlers.in_transaction(Shipped)
    def third(event: Shipped) -> None: ...

    found = handlers.for_type(Shipped, Timing.IN_TRANSACTION)
    assert [s.handler for s in found] == [first, second, third]
    assert [s.wants_context for s in found] == [False, True, False]
    # The decorator returns the function unchanged: it stays callable and testable on its own.
    assert first(Shipped("o")) is None


def test_timing_is_required_and_must_be_a_timing() -> None:
    handlers = Handlers()
    with pytest.raises(TypeError):
        handlers.add(Shipped, noop)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="when= must be"):
        handlers.add(Shipped, noop, when="in_transaction")  # type: ignore[arg-type]


def test_timings_are_kept_apart() -> None:
    handlers = Handlers()
    handlers.add(Shipped, noop, when=Timing.IN_TRANSACTION)

    @handlers.after_commit(Shipped, name="dispatch-test.notify")
    async def notify(event: Shipped) -> None: ...

    assert [s.handler for s in handlers.for_type(Shipped, Timing.IN_TRANSACTION)] == [noop]
    (after,) = handlers.for_type(Shipped, Timing.AFTER_COMMIT)
    assert after.handler is notify
    assert after.is_async
    assert after.name == "dispatch-test.notify"
    assert handlers.has_after_commit(Shipped)
    assert not handlers.has_after_commit(Refunded)
    assert list(handlers.subscribers()) == ["dispatch-test.notify"]


def test_base_class_subscription_receives_subclasses_only() -> None:
    handlers = Handlers()
    handlers.add(Shipped, noop, when=Timing.IN_TRANSACTION)
    assert len(handlers.for_type(ExpressShipped, Timing.IN_TRANSACTION)) == 1
    assert handlers.for_type(Refunded, Timing.IN_TRANSACTION) == ()


def test_object_subscription_receives_everything() -> None:
    handlers = Handlers()
    handlers.add(object, noop, when=Timing.IN_TRANSACTION)
    assert len(handlers.for_type(Refunded, Timing.IN_TRANSACTION)) == 1


def test_protocol_subscription_receives_structurally_matching_events() -> None:
    handlers = Handlers()
    handlers.add(HasOrderId, noop, when=Timing.IN_TRANSACTION)
    for matching in (Shipped, ExpressShipped, Cancelled):
        assert len(handlers.for_type(matching, Timing.IN_TRANSACTION)) == 1, matching
    assert handlers.for_type(Refunded, Timing.IN_TRANSACTION) == ()


def test_protocol_with_a_method_requires_the_method() -> None:
    class Describable(Protocol):
        def describe(self) -> str: ...

    @event(name="dispatch-test.Described")
    class Described:
        order_id: str

        def describe(self) -> str:
            return self.order_id

    handlers = Handlers()
    handlers.add(Describable, noop, when=Timing.IN_TRANSACTION)
    assert len(handlers.for_type(Described, Timing.IN_TRANSACTION)) == 1
    assert handlers.for_type(Shipped, Timing.IN_TRANSACTION) == ()


def test_registration_after_a_lookup_is_seen() -> None:
    # Resolution is cached per type; a later registration must invalidate it.
    handlers = Handlers()
    assert handlers.for_type(Shipped, Timing.IN_TRANSACTION) == ()
    handlers.add(Shipped, noop, when=Timing.IN_TRANSACTION)
    assert len(handlers.for_type(Shipped, Timing.IN_TRANSACTION)) == 1


def test_one_subscriber_name_may_handle_several_types_but_each_only_once() -> None:
    # A saga or projection is one subscriber (one position) handling several event types.
    handlers = Handlers()
    handlers.add(Shipped, noop, when=Timing.AFTER_COMMIT, name="dispatch-test.mailer")
    handlers.add(Refunded, noop, when=Timing.AFTER_COMMIT, name="dispatch-test.mailer")
    assert [s.event_type for s in handlers.subscribers()["dispatch-test.mailer"]] == [
        Shipped,
        Refunded,
    ]
    # The same name twice for the same type would be two handlers claiming one position.
    with pytest.raises(ConfigurationError, match=r"'dispatch-test\.mailer' already handles"):
        handlers.add(Shipped, noop, when=Timing.AFTER_COMMIT, name="dispatch-test.mailer")
    # The default name (module + qualname) clashes the same way.
    handlers.add(Shipped, noop, when=Timing.AFTER_COMMIT)
    with pytest.raises(ConfigurationError, match="already handles"):
        handlers.add(Shipped, noop, when=Timing.AFTER_COMMIT)


def test_the_same_function_may_run_in_transaction_for_several_types() -> None:
    handlers = Handlers()
    handlers.add(Shipped, noop, when=Timing.IN_TRANSACTION)
    handlers.add(Refunded, noop, when=Timing.IN_TRANSACTION)
    assert len(handlers.subscriptions(Timing.IN_TRANSACTION)) == 2


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(lambda: None, id="no-arguments"),
        pytest.param(lambda a, b, c: None, id="three-arguments"),
    ],
)
def test_handler_arity_is_checked_at_registration(handler: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"must take \(event\) or \(event, context\)"):
        Handlers().add(Shipped, handler, when=Timing.IN_TRANSACTION)


def test_bound_methods_and_callable_objects_are_handlers() -> None:
    class Service:
        def on_shipped(self, event: Shipped, ctx: HandlerContext) -> None: ...

        def __call__(self, event: Shipped) -> None: ...

    service = Service()
    handlers = Handlers()
    by_method = handlers.add(Shipped, service.on_shipped, when=Timing.IN_TRANSACTION)
    by_call = handlers.add(Shipped, service, when=Timing.IN_TRANSACTION)
    assert by_method.wants_context
    assert not by_call.wants_context


def test_non_callables_and_non_classes_are_rejected() -> None:
    handlers = Handlers()
    with pytest.raises(ConfigurationError, match="not callable"):
        handlers.add(Shipped, "nope", when=Timing.IN_TRANSACTION)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="must be a class"):
        handlers.add(Shipped("x"), noop, when=Timing.IN_TRANSACTION)  # type: ignore[arg-type]


def test_include_composes_registries_and_keeps_names() -> None:
    billing = Handlers()
    billing.add(Refunded, noop, when=Timing.AFTER_COMMIT, name="dispatch-test.billing")
    shipping = Handlers()
    shipping.add(Shipped, noop, when=Timing.IN_TRANSACTION)
    app = Handlers()
    app.include(billing)
    app.include(shipping)
    assert list(app.subscribers()) == ["dispatch-test.billing"]
    assert len(app.for_type(ExpressShipped, Timing.IN_TRANSACTION)) == 1
    with pytest.raises(ConfigurationError, match="already handles"):
        app.include(billing)


def test_protocol_with_only_a_property_does_not_match_everything() -> None:
    class HasCourier(Protocol):
        @property
        def courier(self) -> str: ...

    handlers = Handlers()
    handlers.add(HasCourier, noop, when=Timing.IN_TRANSACTION)
    assert len(handlers.for_type(ExpressShipped, Timing.IN_TRANSACTION)) == 1
    assert handlers.for_type(Shipped, Timing.IN_TRANSACTION) == ()
    assert handlers.for_type(Refunded, Timing.IN_TRANSACTION) == ()
