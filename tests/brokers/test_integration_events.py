"""Translator, publish policy and schema export: no I/O except a SQLite file for the policy."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest
from sqlalchemy import select

from tidings import Envelope, Handlers, InMemoryUnitOfWork, uuid7
from tidings._demo import Base, BuyerCreated, Order, OrderStarted
from tidings.core.codec import Codec
from tidings.core.messages import to_envelope, to_stored
from tidings.core.registry import EventRegistry
from tidings.errors import ConfigurationError, PublishNotAllowed
from tidings.integration.policy import PolicyGuard, PublishPolicy
from tidings.integration.protection import REDACTED, InMemoryKeyStore, Protector
from tidings.integration.schema import asyncapi_document, event_schema, export_documents
from tidings.integration.translator import (
    _ID_NAMESPACE,
    BUS_HEADER,
    Translator,
    integration_event,
    published_language,
)
from tidings.persistence.sql import SqlUnitOfWork
from tidings.persistence.sqlite import sqlite_engine

from .integration_app import OrderOpenedV1, OrderOpenedV2, orders_bus


def started(order_id: str = "o-1") -> Envelope[OrderStarted]:
    return Envelope(
        event=OrderStarted(order_id=order_id, buyer_id="alice", total=Decimal("12.50")),
        event_id=uuid7(),
        event_type="demo.OrderStarted",
        event_version=1,
        occurred_at=datetime.now(UTC),
        stream_id=order_id,
        stream_version=1,
        correlation_id=uuid7(),
        causation_id=None,
        producer="ordering",
    )


# -- translator --------------------------------------------------------------------------------


def test_one_domain_event_becomes_both_public_versions_side_by_side() -> None:
    domain = started()
    public = orders_bus.translate(domain)
    assert [(p.event_type, p.event_version) for p in public] == [
        ("public.orders.OrderOpened", 1),
        ("public.orders.OrderOpened", 2),
    ]
    v1, v2 = public
    assert v1.event == OrderOpenedV1(order_id="o-1", total="12.50")
    assert v2.event == OrderOpenedV2(order_id="o-1", buyer="alice", total=Decimal("12.50"))
    for item in public:
        assert item.causation_id == domain.event_id
        assert item.correlation_id == domain.correlation_id
        assert item.stream_id == domain.stream_id
        assert item.headers[BUS_HEADER] == "orders"
    assert published_language.get("public.orders.OrderOpened", 2) is OrderOpenedV2


def test_translation_is_deterministic_so_retries_deduplicate() -> None:
    domain = started()
    first = [p.event_id for p in orders_bus.translate(domain)]
    second = [p.event_id for p in orders_bus.translate(domain)]
    assert first == second
    assert len(set(first)) == 2
    assert domain.event_id not in first


def test_derived_ids_are_uuid5_of_the_domain_id_and_the_public_type() -> None:
    # The wire contract: a relay of another tidings version republishing the same outbox row
    # after a crash must send the same id, or consumers would not deduplicate it.
    domain = started()
    expected = [
        uuid.uuid5(_ID_NAMESPACE, f"{domain.event_id}:public.orders.OrderOpened:{version}")
        for version in (1, 2)
    ]
    assert [p.event_id for p in orders_bus.translate(domain)] == expected
    assert [row.event_id for row in orders_bus.to_stored(domain)] == expected


def test_stored_rows_are_the_translated_envelopes_encoded() -> None:
    domain = replace(started(), headers={"x-app": "1", "traceparent": "t"})
    rows = orders_bus.to_stored(domain)
    assert rows == [to_stored(public, orders_bus.codec) for public in orders_bus.translate(domain)]
    assert rows[0].headers == {"x-app": "1", "traceparent": "t", BUS_HEADER: "orders"}
    assert rows[0].headers is not rows[1].headers  # each row owns its headers
    assert domain.headers == {"x-app": "1", "traceparent": "t"}


def test_untranslated_domain_events_do_not_leave_the_process() -> None:
    envelope = Envelope(
        event=BuyerCreated(buyer_id="b"),
        event_id=uuid7(),
        event_type="demo.BuyerCreated",
        event_version=1,
        occurred_at=started().occurred_at,
        stream_id="b",
        stream_version=1,
        correlation_id=uuid7(),
        causation_id=None,
        producer="ordering",
    )
    assert orders_bus.translate(envelope) == []
    assert orders_bus.to_stored(envelope) == []


def test_stored_integration_events_decode_in_a_consumer_that_knows_one_version() -> None:
    stored_v1, _ = orders_bus.to_stored(started())
    registry = EventRegistry()
    registry.register(OrderOpenedV1)
    received = to_envelope(stored_v1, Codec(registry))
    assert received.event == OrderOpenedV1(order_id="o-1", total="12.50")


def test_sensitive_public_fields_are_encrypted_by_the_translator() -> None:
    keys = InMemoryKeyStore()
    protected_bus = Translator("orders", protector=Protector(keys))
    protected_bus.add(
        OrderStarted, OrderOpenedV2, lambda e: OrderOpenedV2(e.order_id, e.buyer_id, e.total)
    )
    (stored,) = protected_bus.to_stored(started("o-9"))
    assert b"alice" not in stored.payload
    registry = EventRegistry()
    registry.register(OrderOpenedV2)
    received = to_envelope(stored, Codec(registry))
    assert Protector(keys).reveal(received.event).buyer == "alice"
    keys.erase("o-9")
    assert Protector(keys).reveal(received.event).buyer == REDACTED


def test_translator_mistakes_are_configuration_errors() -> None:
    bus = Translator("x")
    with pytest.raises(ConfigurationError, match="cannot be published as it is"):
        bus.add(OrderStarted, OrderStarted, lambda e: e)
    bus.add(OrderStarted, OrderOpenedV1, lambda e: "not an event")
    with pytest.raises(ConfigurationError, match="returned str, not OrderOpenedV1"):
        bus.translate(started())
    with pytest.raises(ConfigurationError, match="already mapped"):
        bus.add(OrderStarted, OrderOpenedV1, lambda e: None)
    with pytest.raises(ConfigurationError, match="already declared"):

        @integration_event(name="public.orders.OrderOpened", version=1)
        class Impostor:
            order_id: str


def test_a_mapping_may_skip_an_event() -> None:
    bus = Translator("x")
    bus.add(OrderStarted, OrderOpenedV1, lambda e: None)
    assert bus.translate(started()) == []


# -- policy ------------------------------------------------------------------------------------


def test_policy_allows_granted_types_and_names_what_is_allowed_otherwise() -> None:
    policy = (
        PublishPolicy()
        .allow("ordering", "orders", OrderOpenedV1)
        .allow("ordering", "audit", "public.orders.OrderOpened")
    )
    policy.check("ordering", "orders", "public.orders.OrderOpened", 1)
    policy.check("ordering", "audit", "public.orders.OrderOpened", 7)
    with pytest.raises(PublishNotAllowed) as caught:
        policy.check("ordering", "orders", "public.orders.OrderOpened", 2)
    message = str(caught.value)
    assert (
        "producer 'ordering' may not publish public.orders.OrderOpened v2 to bus 'orders'"
        in message
    )
    assert "public.orders.OrderOpened@1 on 'orders'" in message
    with pytest.raises(PublishNotAllowed, match="may publish: nothing"):
        policy.check("billing", "orders", "public.orders.OrderOpened", 1)
    with pytest.raises(PublishNotAllowed, match="has no producer"):
        policy.check(None, "orders", "public.orders.OrderOpened", 1)
    with pytest.raises(ConfigurationError, match="name@version"):
        policy.allow("x", "y", "Name@zero")


def test_relay_side_check_on_stored_rows() -> None:
    policy = PublishPolicy().allow("ordering", "orders", OrderOpenedV1)
    v1, v2 = orders_bus.to_stored(started())
    policy.check_stored(v1, "orders")
    with pytest.raises(PublishNotAllowed):
        policy.check_stored(v2, "orders")


def test_guard_in_a_sql_unit_of_work_raises_before_commit_and_writes_nothing(
    tmp_path: Path,
) -> None:
    engine = sqlite_engine(tmp_path / "policy.sqlite")
    Base.metadata.create_all(engine)
    only_v1 = PolicyGuard(PublishPolicy().allow("ordering", "orders", OrderOpenedV1), [orders_bus])
    uow = SqlUnitOfWork(engine, Handlers(), producer="ordering", participants=[only_v1])
    with uow:
        uow.add(Order.start("o-1", "alice", Decimal(1)))
        with pytest.raises(PublishNotAllowed, match="OrderOpened v2"):
            uow.commit()
    with engine.connect() as connection:
        assert connection.execute(select(Order.__table__)).all() == []
    both = PolicyGuard(
        PublishPolicy().allow("ordering", "orders", OrderOpenedV1, OrderOpenedV2), [orders_bus]
    )
    uow = SqlUnitOfWork(engine, Handlers(), producer="ordering", participants=[both])
    with uow:
        uow.add(Order.start("o-2", "alice", Decimal(1)))
        uow.commit()
    with engine.connect() as connection:
        assert [row.id for row in connection.execute(select(Order.__table__))] == ["o-2"]
    engine.dispose()


def test_guard_as_an_in_transaction_handler_on_any_unit_of_work() -> None:
    from tidings.core.aggregate import Aggregate

    class Cart(Aggregate):
        def __init__(self, order_id: str) -> None:
            super().__init__()
            self.id = order_id
            self.record(OrderStarted(order_id=order_id, buyer_id="bob", total=Decimal(3)))

    handlers = Handlers()
    PolicyGuard(
        PublishPolicy().allow("someone-else", "orders", OrderOpenedV1), [orders_bus]
    ).install(handlers)
    uow = InMemoryUnitOfWork(handlers=handlers, producer="ordering")
    with uow:
        uow.add(Cart("c-1"))
        with pytest.raises(PublishNotAllowed, match="producer 'ordering'"):
            uow.commit()


# -- schema export -----------------------------------------------------------------------------


def test_every_public_version_gets_a_json_schema() -> None:
    documents = export_documents([orders_bus])
    assert set(documents) == {
        "public.orders.OrderOpened.v1.schema.json",
        "public.orders.OrderOpened.v2.schema.json",
        "asyncapi.json",
    }
    v2 = documents["public.orders.OrderOpened.v2.schema.json"]
    assert v2["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert v2["x-tidings-event-version"] == 2
    definition = v2["$defs"]["OrderOpenedV2"]
    assert set(definition["required"]) == {"order_id", "buyer", "total"}
    assert event_schema(OrderOpenedV1)["title"] == "public.orders.OrderOpened"


def test_asyncapi_document_lists_buses_messages_and_headers() -> None:
    document = asyncapi_document([orders_bus, Translator("empty")], title="Orders")
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "Orders"
    channel = document["channels"]["orders"]
    assert set(channel["messages"]) == {
        "public.orders.OrderOpened.v1",
        "public.orders.OrderOpened.v2",
    }
    assert document["operations"]["send-orders"]["action"] == "send"
    message = document["components"]["messages"]["public.orders.OrderOpened.v2"]
    assert message["payload"] == {"$ref": "#/components/schemas/public.orders.OrderOpened.v2"}
    headers = document["components"]["schemas"]["tidings-headers"]
    assert "tidings-event-id" in headers["required"]
    assert "traceparent" in headers["properties"]
    # Every $ref points at something that exists in the document.
    _check_refs(document, document)
    assert document["channels"]["empty"]["messages"] == {}


def _check_refs(node: object, root: dict) -> None:  # type: ignore[type-arg]
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target: object = root
            for part in ref.removeprefix("#/").split("/"):
                assert isinstance(target, dict) and part in target, f"dangling {ref}"
                target = target[part]
        for value in node.values():
            _check_refs(value, root)
    elif isinstance(node, list):
        for value in node:
            _check_refs(value, root)


def test_uuid_namespace_is_stable() -> None:
    # Changing the namespace would change every derived id and defeat deduplication.
    from tidings.integration import translator

    assert UUID("6f2b7a4e-0c55-4a59-9a43-2d0f2a7c9e11") == translator._ID_NAMESPACE
