"""The reference application split into processes on PostgreSQL and RabbitMQ.

API (no relays), relay (publishing to RabbitMQ) and the shipping context's worker run as
separate OS processes, configured only by their command lines and environment, exactly as the
README documents. The test drives the API over HTTP, kills the relay with SIGKILL mid-way and
restarts it, and checks the other service received each integration event once.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import Engine, select, text

from tidings.testing.services import POSTGRES_URL, RABBITMQ_URL, require

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BOOK = {"sku": "book", "quantity": 2, "unit_price": "20.00"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def eventually(check: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.1)


class Processes:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.relay_command: tuple[str, ...] = ()

    def run(self, *command: str) -> None:
        subprocess.run(command, env=self.env, cwd=ROOT, check=True, timeout=120)

    def start(self, name: str, *command: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.running[name] = subprocess.Popen(
            command, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.running.values():
            process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.running.clear()

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.logs.glob("*.log"))


@pytest.fixture
def system(pg_engine: Engine, pg_schema: str, run_id: str, tmp_path: Path) -> Iterator[Processes]:
    require("rabbitmq")
    url = f"{POSTGRES_URL}?options={quote(f'-csearch_path={pg_schema}')}"
    bus = f"shipping-{run_id}"
    key = secrets.token_hex(32)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "examples"),
        "ORDERING_SHIPPING_BUS": bus,
        "SHIPPING_BUS": bus,
        "ORDERING_SIGNING_KEY": key,
        "SHIPPING_SIGNING_KEY": key,
        "ORDERING_DECLINED_BUYERS": "mallory",
        "SHIPPING_DB_URL": url,
        "SHIPPING_BUS_URL": RABBITMQ_URL,
        "ORDERING_URL": url,
        "ORDERING_NOTIFIER_DOWN_FILE": str(tmp_path / "notifier-down"),
    }
    processes = Processes(env, tmp_path)
    python = sys.executable
    processes.run(python, "-m", "ordering", "init", "--url", url)
    processes.run(python, "-m", "shipping_context", "init")
    port = free_port()
    env["API"] = f"http://127.0.0.1:{port}"
    processes.start(
        "api", python, "-m", "ordering", "api", "--url", url, "--no-relays", "--port", str(port)
    )
    relay = (python, "-m", "ordering", "relay", "--url", url, "--bus", RABBITMQ_URL)
    processes.relay_command = relay
    processes.start("relay", *relay, "--node", "relay-1")
    processes.start(
        "worker", str(BIN / "tidings"), "worker", "--app", "shipping_context.service:worker"
    )
    try:
        yield processes
    except BaseException:
        print(processes.output())
        raise
    finally:
        processes.stop_all()
        asyncio.run(_delete_bus(bus))


async def _delete_bus(bus: str) -> None:
    from tidings.brokers.port import Topology
    from tidings.brokers.rabbitmq import RabbitMQBroker

    broker = RabbitMQBroker(
        RABBITMQ_URL, Topology(name=bus, groups=("shipping-context",), partitions=4)
    )
    await broker.connect()
    try:
        await broker.delete()
    finally:
        await broker.close()


def test_split_processes_end_to_end(system: Processes, pg_engine: Engine) -> None:
    api = system.env["API"]
    client = httpx.Client(base_url=api, timeout=10)

    def api_up() -> bool:
        try:
            return client.get("/openapi.json").status_code == 200
        except httpx.HTTPError:
            return False

    eventually(api_up, "the API to start")
    for sku, quantity in [("book", 100), ("lamp", 5)]:
        added = client.post("/stock", json={"sku": sku, "quantity": quantity})
        assert added.status_code == 204

    def place(order_id: str, buyer: str, line: dict[str, object] = BOOK) -> None:
        body = {"order_id": order_id, "buyer_id": buyer, "lines": [line]}
        assert client.post("/orders", json=body).status_code == 201
        assert client.post(f"/orders/{order_id}/confirm").status_code == 200

    place("o-1", "ada")
    # The relay dies mid-flight, like a crashed process; its replacement takes over.
    system.kill("relay")
    place("o-2", "mallory")  # payment declined: compensated by the saga
    system.start("relay", *system.relay_command, "--node", "relay-1")

    def status(order_id: str) -> str:
        return str(client.get(f"/orders/{order_id}").json()["status"])

    eventually(lambda: status("o-2") == "cancelled", "o-2 to be cancelled by the saga")
    eventually(lambda: status("o-1") == "shipped", "o-1 to be paid, reserved and shipped")

    # Loyalty: past 6,000 of confirmed orders, the next order gets 10% off.
    place("o-3", "carol", {"sku": "book", "quantity": 50, "unit_price": "130.00"})
    time.sleep(0.2)

    eventually(lambda: status("o-3") == "shipped", "o-3 to ship")
    # The loyalty account is updated after commit: wait until a new order shows the discount.
    deadline = time.monotonic() + 60
    order_number = 4
    while True:
        order_id = f"o-{order_number}"
        body = {"order_id": order_id, "buyer_id": "carol", "lines": [BOOK]}
        assert client.post("/orders", json=body).status_code == 201
        if client.get(f"/orders/{order_id}").json()["discount_percent"] == 10:
            assert client.get(f"/orders/{order_id}").json()["total"] == "36.00"
            break
        assert time.monotonic() < deadline, "carol never got the loyalty discount"
        order_number += 1
        time.sleep(0.2)

    # The notification service goes down: orders still go through; the message is
    # dead-lettered, and an operator replays it with the CLI once the service is back.
    down = Path(system.env["ORDERING_NOTIFIER_DOWN_FILE"])
    down.touch()
    place("o-bob", "bob")
    eventually(lambda: status("o-bob") == "shipped", "o-bob to ship despite the outage")
    cli = [str(BIN / "tidings"), "dlq", "list", "--url", system.env["ORDERING_URL"]]
    cli += ["--log", "tidings_events", "--subscriber", "notifications", "--json"]

    def dead_letters() -> list[dict[str, object]]:
        out = subprocess.run(cli, env=system.env, cwd=ROOT, capture_output=True, check=True)
        return list(json.loads(out.stdout))

    eventually(lambda: len(dead_letters()) == 1, "the notification to be dead-lettered")
    [letter] = dead_letters()
    down.unlink()
    replay = [str(BIN / "tidings"), "dlq", "replay", str(letter["id"])]
    replay += ["--url", system.env["ORDERING_URL"], "--app", "ordering.bootstrap:relay_config"]
    subprocess.run(replay, env=system.env, cwd=ROOT, check=True, timeout=120)
    assert dead_letters() == []
    with pg_engine.connect() as conn:
        mailbox = conn.execute(
            text("SELECT event_type FROM tidings_events WHERE stream_id = 'Mailbox-bob'")
        ).scalars()
        assert list(mailbox) == ["notifications.CustomerNotified"]

    # Support desk: escalation sets the agent's response deadline.
    ticket = {"ticket_id": "t-1", "department": "billing", "agent_id": "agent-7"}
    opened = client.post("/tickets", json={**ticket, "priority": 3, "subject": "invoice"})
    assert opened.status_code == 201
    escalated = client.post("/tickets/t-1/escalate", json={"reason": "waited"}).json()
    assert escalated["priority"] == 2 and escalated["respond_by"]

    # Out of stock: the payment is refunded and the order cancelled.
    place("o-dan", "dan", {"sku": "lamp", "quantity": 9, "unit_price": "5.00"})
    eventually(lambda: status("o-dan") == "cancelled", "o-dan to be cancelled")

    from shipping_context.service import pick_lists

    def picks() -> dict[str, str]:
        with pg_engine.connect() as conn:
            rows = conn.execute(select(pick_lists.c.order_id, pick_lists.c.status)).all()
        return {str(order_id): str(state) for order_id, state in rows}

    expected = {
        "o-1": "to-pick",
        "o-2": "withdrawn",
        "o-3": "to-pick",
        "o-dan": "withdrawn",
        "o-bob": "to-pick",
    }
    deadline = time.monotonic() + 60
    while picks() != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert picks() == expected, "the shipping context must receive every integration event"
    with pg_engine.connect() as conn:
        from tidings.brokers.inbox import inbox_table

        handled = conn.execute(select(inbox_table.c.event_type)).scalars().all()
    # Exactly one of each, despite the relay's crash and restart.
    assert sorted(handled) == sorted(
        ["ordering.public.ShipmentRequested"] * 5 + ["ordering.public.ShipmentWithdrawn"] * 2
    )
