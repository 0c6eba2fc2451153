"""Sending outbox rows to a bus: the policy check, the signature, then a confirmed publish.

This is what a relay calls for a bus (see the module docstring of :mod:`tidings.brokers.port`
for the guarantees of ``publish``)::

    publisher = BlockingBusPublisher(
        lambda: RabbitMQBroker(url, ORDERS_BUS),
        policy=policy,                  # checked again here, right before sending
        signer=Signer(keyring),         # signed at send time, so signed-at is fresh
    )
    publisher.start()
    publisher.publish(rows)             # blocks until the broker confirmed every row

``publish`` raises :class:`~tidings.errors.PublishNotAllowed` (before sending anything) when a
row is not allowed on the bus, which no retry will fix: dead-letter that row. It raises a
:class:`~tidings.errors.BrokerError` when the broker is away or refused: retry the same rows
later with backoff; copies that did arrive are deduplicated by the consumers' inboxes (and, on
NATS, by JetStream's duplicate window).

:class:`BusPublisher` is the asyncio form; :class:`BlockingBusPublisher` runs one in an event
loop of its own thread, for threaded callers such as the relay.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from tidings.brokers.port import Broker
from tidings.core.messages import StoredEvent
from tidings.errors import BrokerUnavailable
from tidings.integration.policy import PublishPolicy
from tidings.integration.signing import Signer


class BusPublisher:
    """Checks, signs and publishes rows to one bus (asyncio)."""

    def __init__(
        self,
        broker: Broker,
        *,
        policy: PublishPolicy | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.broker = broker
        self.policy = policy
        self.signer = signer
        self._connected = False

    @property
    def bus(self) -> str:
        return self.broker.topology.name

    async def connect(self) -> None:
        if not self._connected:
            await self.broker.connect()
            await self.broker.declare()
            self._connected = True

    async def publish(self, rows: Sequence[StoredEvent]) -> None:
        if self.policy is not None:
            for row in rows:
                self.policy.check_stored(row, self.bus)
        outgoing = [self.signer.sign(row) for row in rows] if self.signer is not None else rows
        await self.connect()
        await self.broker.publish(outgoing)

    async def close(self) -> None:
        self._connected = False
        await self.broker.close()


class BlockingBusPublisher:
    """A :class:`BusPublisher` for threaded code: its own event loop in a daemon thread."""

    def __init__(
        self,
        broker: Callable[[], Broker],
        *,
        policy: PublishPolicy | None = None,
        signer: Signer | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._make_broker = broker
        self._policy = policy
        self._signer = signer
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._publisher: BusPublisher | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            # The broker client is made inside its loop: drivers bind to the running loop.
            self._publisher = BusPublisher(
                self._make_broker(), policy=self._policy, signer=self._signer
            )
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="tidings-bus-publisher", daemon=True)
        self._thread.start()
        ready.wait()

    def publish(self, rows: Sequence[StoredEvent]) -> None:
        """Block until every row is confirmed (or raise; see the module docstring)."""
        if self._loop is None or self._publisher is None:
            raise BrokerUnavailable("the publisher is not started: call start() first")
        future: Future[None] = asyncio.run_coroutine_threadsafe(
            self._publisher.publish(rows), self._loop
        )
        try:
            future.result(self.timeout)
        except TimeoutError:
            future.cancel()
            raise BrokerUnavailable(
                f"no confirmation from bus {self._publisher.bus!r} within {self.timeout}s"
            ) from None

    def close(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._publisher is not None:
            asyncio.run_coroutine_threadsafe(self._publisher.close(), self._loop).result(
                self.timeout
            )
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self.timeout)
        self._loop.close()
        self._loop = self._thread = self._publisher = None
