"""The reference application end to end, through its HTTP API, on SQLite and PostgreSQL.

Relays are stepped in the test's thread (``run_until_idle``) so every assertion sees a settled
system without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from ordering.api import create_api
from ordering.bootstrap import OrderingApp
from ordering.ports import Notifier, PaymentGateway
from ordering.scenario import run_scenario
from ordering.service import add_stock

BOOK = {"sku": "book", "quantity": 2, "unit_price": "20.00"}


@pytest.fixture(params=["sqlite", "postgres"])
def app(request: pytest.FixtureRequest) -> Iterator[OrderingApp]:
    engine: Engine = request.getfixturevalue(
        "sqlite_sync_engine" if request.param == "sqlite" else "pg_engine"
    )
    app = OrderingApp(
        engine,
        payments=PaymentGateway(declined_buyers={"mallory"}),
        notifier=Notifier(),
        listen=False,
    )
    app.create_tables()
    yield app
    app.stop()


@pytest.fixture
def http(app: OrderingApp) -> TestClient:
    add_stock(app, "book", 100)
    add_stock(app, "lamp", 5)
    app.run_until_idle()
    return TestClient(create_api(app))


def place_and_confirm(http: TestClient, order_id: str, buyer: str, *lines: dict[str, Any]) -> None:
    placed = http.post("/orders", json={"order_id": order_id, "buyer_id": buyer, "lines": lines})
    assert placed.status_code == 201, placed.text
    confirmed = http.post(f"/orders/{order_id}/confirm")
    assert confirmed.status_code == 200, confirmed.text


def status(http: TestClient, order_id: str) -> str:
    return str(http.get(f"/orders/{order_id}").json()["status"])


def test_a_successful_order(app: OrderingApp, http: TestClient) -> None:
    place_and_confirm(http, "o-1", "ada", BOOK)
    app.run_until_idle()
    order = http.get("/orders/o-1").json()
    assert order == {
        "order_id": "o-1",
        "buyer_id": "ada",
        "status": "shipped",
        "total": "40.00",
        "discount_percent": 0,
        "version": 3,
        "lines": [BOOK],
    }
    history = http.get("/orders/o-1/events").json()
    assert [h["type"] for h in history] == [
        "ordering.OrderStarted",
        "ordering.OrderConfirmed",
        "ordering.OrderShipped",
    ]
    # Shipped because the saga saw payment and stock: caused by its ShipOrder command.
    assert history[2]["causation_id"] is not None
    assert app.services.notifier.messages_to("ada") == ["Order o-1 is confirmed (40.00)"]
    assert len(app.services.payments.charges) == 1


def test_a_declined_payment_is_compensated(app: OrderingApp, http: TestClient) -> None:
    place_and_confirm(http, "o-2", "mallory", BOOK)
    app.run_until_idle()
    assert status(http, "o-2") == "cancelled"
    history = [h["type"] for h in http.get("/orders/o-2/events").json()]
    assert history[-1] == "ordering.OrderCancelled"
    # The stock reserved for it went back.
    book = app.store.read_stream("StockItem-book")
    assert [e.event.event_type for e in book][-1] == "inventory.InventoryReleased"


def test_notifications_outage_does_not_block_orders(app: OrderingApp, http: TestClient) -> None:
    notifier = app.services.notifier
    notifier.down = True
    place_and_confirm(http, "o-3", "bob", BOOK)
    deadline = time.monotonic() + 30
    while not app.dead_letters().find(subscriber="notifications"):
        app.run_until_idle()
        assert time.monotonic() < deadline, "the notification was never dead-lettered"
        time.sleep(0.02)
    assert status(http, "o-3") == "shipped"  # the outage held back nothing but the message
    assert notifier.messages_to("bob") == []
    notifier.down = False
    [letter] = app.dead_letters().find(subscriber="notifications")
    app.dead_letters().replay(app.domain_relay_config, letter.id)
    assert notifier.messages_to("bob") == ["Order o-3 is confirmed (40.00)"]
    assert app.dead_letters().find() == []


def test_loyal_customers_get_ten_percent_and_one_message(
    app: OrderingApp, http: TestClient
) -> None:
    expensive = {"sku": "book", "quantity": 50, "unit_price": "130.00"}  # 6,500
    place_and_confirm(http, "o-4", "carol", expensive)
    app.run_until_idle()
    place_and_confirm(http, "o-5", "carol", BOOK)
    app.run_until_idle()
    second = http.get("/orders/o-5").json()
    assert (second["discount_percent"], second["total"]) == (10, "36.00")
    thanks = [m for m in app.services.notifier.messages_to("carol") if "Thank you" in m]
    assert len(thanks) == 1


def test_out_of_stock_refunds_and_releases(app: OrderingApp, http: TestClient) -> None:
    too_many_lamps = {"sku": "lamp", "quantity": 9, "unit_price": "5.00"}
    place_and_confirm(http, "o-6", "dan", BOOK, too_many_lamps)
    app.run_until_idle()
    assert status(http, "o-6") == "cancelled"
    payment = [e.event.event_type for e in app.store.read_stream("Payment-o-6")]
    assert payment == ["payments.PaymentProcessed", "payments.PaymentRefunded"]
    book = [e.event.event_type for e in app.store.read_stream("StockItem-book")]
    assert book[-2:] == ["inventory.InventoryReserved", "inventory.InventoryReleased"]
    lamp = [e.event.event_type for e in app.store.read_stream("StockItem-lamp")]
    assert lamp[-1] == "inventory.InventoryReservationFailed"


def test_an_sku_twice_in_one_order_is_refused(http: TestClient) -> None:
    twice = {"order_id": "o-8", "buyer_id": "a", "lines": [BOOK, BOOK]}
    answer = http.post("/orders", json=twice)
    assert answer.status_code == 409 and "one line only" in answer.json()["detail"]


def test_support_escalation_sets_a_deadline(app: OrderingApp, http: TestClient) -> None:
    ticket = {
        "ticket_id": "t-1",
        "department": "billing",
        "agent_id": "agent-7",
        "priority": 3,
        "subject": "invoice is wrong",
    }
    opened = http.post("/tickets", json=ticket)
    assert opened.status_code == 201, opened.text
    assert opened.json()["respond_by"] is None
    escalated = http.post("/tickets/t-1/escalate", json={"reason": "waited too long"}).json()
    assert (escalated["priority"], escalated["escalations"]) == (2, 1)
    assert escalated["respond_by"] is not None  # set in the same transaction as the escalation
    types = [e.event.event_type for e in app.store.read_stream("Ticket-t-1")]
    assert types == [
        "support.TicketOpened",
        "support.TicketEscalated",
        "support.ResponseDeadlineSet",
    ]
    assert http.get("/tickets/nope").status_code == 404
    assert http.post("/tickets/nope/escalate", json={"reason": "x"}).status_code == 404
    unknown = http.post("/tickets", json={**ticket, "ticket_id": "t-2", "department": "nope"})
    assert unknown.status_code == 422 and "unknown department" in unknown.text


def test_bad_requests_get_clear_answers(http: TestClient) -> None:
    assert http.get("/orders/nope").status_code == 404
    assert http.post("/orders/nope/confirm").status_code == 404
    bad = http.post("/orders", json={"order_id": "x", "buyer_id": "a", "lines": []})
    assert bad.status_code == 422
    hostile = http.post(
        "/orders",
        json={"order_id": "../etc", "buyer_id": "a", "lines": [BOOK]},
    )
    assert hostile.status_code == 422
    place = http.post("/orders", json={"order_id": "o-7", "buyer_id": "a", "lines": [BOOK]})
    assert place.status_code == 201
    assert (
        http.post("/orders", json={"order_id": "o-7", "buyer_id": "a", "lines": [BOOK]}).status_code
        == 409
    )
    http.post("/orders/o-7/confirm")
    again = http.post("/orders/o-7/confirm")
    assert again.status_code == 409 and "cannot be confirmed" in again.json()["detail"]


def test_openapi_is_served(http: TestClient) -> None:
    spec = http.get("/openapi.json").json()
    assert {"/orders", "/orders/{order_id}", "/orders/{order_id}/events"} <= set(spec["paths"])


def test_the_whole_demo_scenario(app: OrderingApp) -> None:
    checks = run_scenario(app)
    assert all(checks.values()), {name: ok for name, ok in checks.items() if not ok}
