"""The HTTP API (FastAPI): place, confirm and cancel orders; read an order and its history; open,
escalate and read support tickets.

``create_api(app)`` builds the ASGI application around an :class:`OrderingApp`; OpenAPI is served
at ``/openapi.json`` and the interactive docs at ``/docs``. Domain rule violations answer 409,
unknown orders 404, malformed requests 422 (FastAPI's validation).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from ordering import service
from ordering.bootstrap import OrderingApp
from ordering.domain.orders import OrderRuleViolated
from tidings.errors import ConcurrencyError


class LineIn(BaseModel):
    sku: str = Field(min_length=1, max_length=100)
    quantity: int = Field(gt=0, le=10_000)
    unit_price: Decimal = Field(ge=0, max_digits=12, decimal_places=2)


class PlaceOrder(BaseModel):
    order_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    buyer_id: str = Field(min_length=1, max_length=100)
    lines: list[LineIn] = Field(min_length=1, max_length=100)


class StockIn(BaseModel):
    sku: str = Field(min_length=1, max_length=100)
    quantity: int = Field(gt=0, le=1_000_000)


class OpenTicket(BaseModel):
    ticket_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    department: str = Field(min_length=1, max_length=100)
    agent_id: str = Field(min_length=1, max_length=100)
    priority: int = Field(ge=1, le=4)
    subject: str = Field(min_length=1, max_length=500)


class Escalation(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


class CancelRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


def create_api(app: OrderingApp, *, run_relays: bool = False) -> FastAPI:
    """The API. With ``run_relays`` the relays run in this process for the API's lifetime."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if run_relays:
            app.start()
        try:
            yield
        finally:
            if run_relays:
                app.stop()

    api = FastAPI(title="tidings ordering", version="1.0", lifespan=lifespan)

    def guarded(fn: Any, *args: Any) -> Any:
        try:
            return fn(app, *args)
        except service.NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except (OrderRuleViolated, ConcurrencyError) as exc:
            raise HTTPException(409, str(exc)) from exc

    @api.post("/orders", status_code=201)
    def place_order(body: PlaceOrder) -> dict[str, Any]:
        lines = [line.model_dump() for line in body.lines]
        guarded(service.place_order, body.order_id, body.buyer_id, lines)
        return guarded(service.order_state, body.order_id)  # type: ignore[no-any-return]

    @api.post("/orders/{order_id}/confirm")
    def confirm_order(order_id: str) -> dict[str, Any]:
        guarded(service.confirm_order, order_id)
        return guarded(service.order_state, order_id)  # type: ignore[no-any-return]

    @api.post("/orders/{order_id}/cancel")
    def cancel_order(order_id: str, body: CancelRequest) -> dict[str, Any]:
        guarded(service.cancel_order, order_id, body.reason)
        return guarded(service.order_state, order_id)  # type: ignore[no-any-return]

    @api.post("/stock", status_code=204)
    def add_stock(body: StockIn) -> None:
        guarded(service.add_stock, body.sku, body.quantity)

    @api.post("/tickets", status_code=201)
    def open_ticket(body: OpenTicket) -> dict[str, Any]:
        if body.department not in app.services.departments:
            raise HTTPException(422, f"unknown department {body.department!r}")
        if body.agent_id not in app.services.agents:
            raise HTTPException(422, f"unknown agent {body.agent_id!r}")
        guarded(
            service.open_ticket,
            body.ticket_id,
            body.department,
            body.agent_id,
            body.priority,
            body.subject,
        )
        return guarded(service.ticket_state, body.ticket_id)  # type: ignore[no-any-return]

    @api.post("/tickets/{ticket_id}/escalate")
    def escalate_ticket(ticket_id: str, body: Escalation) -> dict[str, Any]:
        guarded(service.escalate_ticket, ticket_id, body.reason)
        return guarded(service.ticket_state, ticket_id)  # type: ignore[no-any-return]

    @api.get("/tickets/{ticket_id}")
    def get_ticket(ticket_id: str) -> dict[str, Any]:
        return guarded(service.ticket_state, ticket_id)  # type: ignore[no-any-return]

    @api.get("/orders/{order_id}")
    def get_order(order_id: str) -> dict[str, Any]:
        return guarded(service.order_state, order_id)  # type: ignore[no-any-return]

    @api.get("/orders/{order_id}/events")
    def get_history(order_id: str) -> list[dict[str, Any]]:
        return guarded(service.order_history, order_id)  # type: ignore[no-any-return]

    return api
