"""The end-to-end demo (``make demo``): the whole flow on SQLite, with the in-memory broker.

1. Ada's order succeeds: payment, stock, shipping and a notification, each after commit; once
   paid and reserved, the saga ships it.
2. Mallory's payment is declined: the saga releases the stock and cancels the order.
3. The notification service is down while Bob's order is confirmed: the order goes through; the
   notification is dead-lettered, and goes out when the service is back and it is replayed.
4. Carol crosses the loyalty threshold: she is told once, and her next order gets 10% off.
5. Dan orders more lamps than there are: the saga refunds the payment and cancels the order.
6. A support ticket is escalated: the agent's response deadline is computed and set.
7. The shipping context (another service, its own database) receives the public events over the
   in-memory broker, signed: a pick list for each confirmed order, withdrawn when one is
   cancelled, each handled once.

It prints the timeline of every event with its causation chain, and exits non-zero unless the
final state is exactly what it should be.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

import shipping_context.service as shipping
from ordering import integration, service
from ordering.bootstrap import OrderingApp
from ordering.ports import Notifier, PaymentGateway
from tidings.brokers.memory import MemoryBroker, MemoryBrokerServer
from tidings.brokers.port import Broker
from tidings.integration.signing import Keyring
from tidings.outbox import tables as outbox
from tidings.persistence.sqlite import sqlite_engine

BOOK = {"sku": "book", "quantity": 2, "unit_price": "20.00"}


def run_scenario(app: OrderingApp) -> dict[str, bool]:
    """Drive every flow; returns the named checks."""
    notifier = app.services.notifier
    service.add_stock(app, "book", 100)
    service.add_stock(app, "lamp", 5)
    service.add_stock(app, "piano", 3)
    app.run_until_idle()

    # 1. success
    service.place_order(app, "o-ada", "ada", [BOOK])
    service.confirm_order(app, "o-ada")
    # 2. payment declined -> compensation
    service.place_order(app, "o-mallory", "mallory", [BOOK])
    service.confirm_order(app, "o-mallory")
    app.run_until_idle()

    # 3. notification outage -> dead letter -> replay
    notifier.down = True
    service.place_order(app, "o-bob", "bob", [BOOK])
    service.confirm_order(app, "o-bob")
    _drain_with_retries(app)
    dead = app.dead_letters().find(subscriber="notifications")
    bob_shipped_while_down = service.order_state(app, "o-bob")["status"] == "shipped"
    notifier.down = False
    for letter in dead:
        app.dead_letters().replay(app.domain_relay_config, letter.id)
    app.run_until_idle()

    # 4. loyalty
    piano = {"sku": "piano", "quantity": 1, "unit_price": "6500.00"}
    service.place_order(app, "o-carol-1", "carol", [piano])
    service.confirm_order(app, "o-carol-1")
    app.run_until_idle()
    service.place_order(app, "o-carol-2", "carol", [BOOK])
    app.run_until_idle()

    # 5. out of stock -> refund + cancel
    service.place_order(app, "o-dan", "dan", [{"sku": "lamp", "quantity": 10, "unit_price": "5"}])
    service.confirm_order(app, "o-dan")
    app.run_until_idle()

    # 6. support desk
    service.open_ticket(app, "t-1", "billing", "agent-7", 3, "invoice is wrong")
    service.escalate_ticket(app, "t-1", "customer waited two days")
    app.run_until_idle()

    from ordering.domain.fulfilment import Payment, StockItem
    from ordering.domain.support import Ticket

    with app.unit_of_work() as uow:
        repository = app.repository(uow)
        lamp = repository.load(StockItem, "lamp")
        book = repository.load(StockItem, "book")
        dan_payment = repository.load(Payment, "o-dan")
        ticket = repository.load(Ticket, "t-1")

    carol_messages = notifier.messages_to("carol")
    return {
        "ada's order paid, reserved, shipped and notified": (
            service.order_state(app, "o-ada")["status"] == "shipped"
            and any("o-ada" in m for m in notifier.messages_to("ada"))
        ),
        "mallory's order cancelled after the declined payment": (
            service.order_state(app, "o-mallory")["status"] == "cancelled"
        ),
        "bob's order shipped while notifications were down": bob_shipped_while_down,
        "bob's notification dead-lettered, then delivered on replay": (
            len(dead) == 1 and any("o-bob" in m for m in notifier.messages_to("bob"))
        ),
        "carol told about loyalty exactly once": (
            sum("Thank you" in m for m in carol_messages) == 1
        ),
        "carol's next order got 10% off": (
            service.order_state(app, "o-carol-2")["discount_percent"] == 10
            and service.order_state(app, "o-carol-2")["total"] == "36.00"
        ),
        "dan's order cancelled and refunded": (
            service.order_state(app, "o-dan")["status"] == "cancelled"
            and dan_payment.status == "refunded"
        ),
        "no lamp held by a cancelled order": lamp.available == 5 and not lamp.held,
        "book stock: 100 - ada 2 - bob 2 (mallory's released)": book.available == 96,
        "ticket escalated with a response deadline": (
            ticket.priority == 2 and ticket.respond_by is not None
        ),
        "no dead letters left": not app.dead_letters().find(),
    }


def _drain_with_retries(app: OrderingApp, rounds: int = 50) -> None:
    """Deliver, letting delayed retries come due (they are short in the demo's policy)."""
    import time

    for _ in range(rounds):
        app.run_until_idle()
        waits = [relay.next_retry_in() for relay in app.relays()]
        pending = [w for w in waits if w is not None]
        if not pending:
            return
        time.sleep(min(pending) + 0.01)


def timeline(app: OrderingApp) -> list[dict[str, Any]]:
    """Every stored event, ordered as a causation tree within each conversation."""
    entries = [entry.event for entry in app.store.iter_log()]
    # The saga's commands live in the outbox; they link its decisions to their effects.
    with app.engine.connect() as conn:
        rows_ = conn.execute(select(outbox.outbox).order_by(outbox.outbox.c.position))
        entries += [outbox.stored_from_row(row._mapping) for row in rows_]
    entries.sort(key=lambda e: e.event_id)  # UUIDv7: creation order
    children: dict[Any, list[Any]] = defaultdict(list)
    ids = {e.event_id for e in entries}
    roots = []
    for e in entries:
        if e.causation_id in ids:
            children[e.causation_id].append(e)
        else:
            roots.append(e)
    rows: list[dict[str, Any]] = []

    def walk(e: Any, depth: int) -> None:
        rows.append(
            {
                "depth": depth,
                "type": e.event_type,
                "stream": e.stream_id,
                "version": e.stream_version,
                "event_id": str(e.event_id),
                "causation_id": str(e.causation_id) if e.causation_id else None,
                "correlation_id": str(e.correlation_id),
            }
        )
        for child in children.get(e.event_id, []):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return rows


#: What the shipping context should hold once the scenario is over: a pick list for each
#: confirmed order, withdrawn for those cancelled after their confirmation.
EXPECTED_PICK_LISTS = {
    "o-ada": "to-pick",
    "o-bob": "to-pick",
    "o-carol-1": "to-pick",
    "o-mallory": "withdrawn",
    "o-dan": "withdrawn",
}


class ShippingContext:
    """The shipping context's worker on a thread and event loop of its own (in production it is
    another process: ``tidings worker --app shipping_context.service:worker``)."""

    def __init__(self, path: Path, bus: Callable[[], Broker], keys: Keyring) -> None:
        self.db_url = f"sqlite+aiosqlite:///{path}"
        self.bus = bus
        self.keys = keys
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shipping-context", daemon=True)

    def _run(self) -> None:
        async def serve() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self._running.set()
            await shipping.serve(self.db_url, self.bus, self.keys, self._stop)

        asyncio.run(serve())

    def start(self) -> None:
        self._thread.start()
        self._running.wait(timeout=30)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def pick_lists(self, expected: dict[str, str], seconds: float = 30.0) -> dict[str, str]:
        """The pick lists, once they are ``expected`` (or as they are after ``seconds``)."""
        deadline = time.monotonic() + seconds
        while True:
            found = asyncio.run(shipping.pick_list_statuses(self.db_url))
            if found == expected or time.monotonic() > deadline or not self._thread.is_alive():
                return found
            time.sleep(0.05)


def main(database: str | None = None, *, as_json: bool = False) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(database) if database else Path(tmp) / "ordering.sqlite"
        engine = sqlite_engine(path)
        # The integration events travel on this run's own in-memory broker, signed with a key
        # both services hold (in production: RabbitMQ, NATS or Redis, and a managed secret).
        keys = Keyring({"ordering-1": secrets.token_bytes(32)})
        bus = functools.partial(MemoryBroker, integration.SHIPPING_TOPOLOGY, MemoryBrokerServer())
        app = OrderingApp(
            engine,
            payments=PaymentGateway(declined_buyers={"mallory"}),
            notifier=Notifier(),
            listen=False,
            bus=bus,
            signing_keys=keys,
        )
        app.create_tables()
        receiver = ShippingContext(Path(tmp) / "shipping.sqlite", bus, keys)
        receiver.start()
        try:
            checks = run_scenario(app)
            checks["shipping context: a pick list per confirmed order, withdrawn if cancelled"] = (
                receiver.pick_lists(EXPECTED_PICK_LISTS) == EXPECTED_PICK_LISTS
            )
            rows = timeline(app)
        finally:
            receiver.stop()
            app.stop()
            engine.dispose()
    ok = all(checks.values())
    if as_json:
        print(json.dumps({"ok": ok, "checks": checks, "timeline": rows}, indent=2))
        return 0 if ok else 1
    print(f"tidings reference application: order management ({datetime.now(UTC):%Y-%m-%d})")
    print("timeline (indented under the event that caused it):\n")
    for row in rows:
        indent = "    " * row["depth"]
        arrow = "└─ " if row["depth"] else ""
        where = f"{row['stream']}@{row['version']}" if row["version"] else "(command)"
        print(f"  {indent}{arrow}{row['type']:<44} {where}")
    print("\nchecks:")
    for name, passed in checks.items():
        print(f"  [{'ok' if passed else 'FAIL'}] {name}")
    print("\nall good" if ok else "\nSOMETHING IS WRONG")
    return 0 if ok else 1
