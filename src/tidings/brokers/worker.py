"""A worker process: run a set of consumers until told to stop.

An application describes its consumers once, in code, and ``tidings worker --app module:attr``
(or :meth:`Worker.run`) runs them::

    worker = Worker(
        [
            BrokerSubscription(
                broker=lambda: RabbitMQBroker(settings.amqp_url, ORDERS_BUS),
                group="billing",
                handler=InboxConsumer("billing", engine, bill_order, verifier=verifier),
            ),
        ],
        translators=[orders_bus],   # what `tidings schema export` documents
    )

Each subscription gets its own broker client (connection). Topology is declared at start
(idempotent), so a fresh environment needs no separate setup step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tidings.brokers.port import Broker, Consumer, Handler
from tidings.errors import BrokerError, ConfigurationError
from tidings.integration.translator import Translator

log = logging.getLogger("tidings.brokers.worker")


@dataclass(frozen=True, slots=True)
class BrokerSubscription:
    """One consumer of a worker: a broker client factory, a group, and the handler."""

    broker: Callable[[], Broker]
    group: str
    handler: Handler


class Worker:
    """Starts every subscription, keeps them running, and stops them gracefully."""

    def __init__(
        self,
        subscriptions: Sequence[BrokerSubscription],
        *,
        translators: Sequence[Translator] = (),
        declare: bool = True,
        retry_connect: float = 2.0,
    ) -> None:
        self.subscriptions = list(subscriptions)
        self.translators = list(translators)
        self.declare = declare
        self.retry_connect = retry_connect
        self._brokers: list[Broker] = []
        self._consumers: list[Consumer] = []

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Connect and subscribe everything, retrying while brokers are unreachable."""
        if not self.subscriptions:
            raise ConfigurationError("the worker has no subscriptions to run")
        for subscription in self.subscriptions:
            broker = subscription.broker()
            while True:
                try:
                    await broker.connect()
                    if self.declare:
                        await broker.declare()
                    consumer = await broker.consume(subscription.group, subscription.handler)
                    break
                except BrokerError as exc:
                    log.warning(
                        "cannot start group %s on bus %s yet (%s); retrying in %.1fs",
                        subscription.group,
                        broker.topology.name,
                        exc,
                        self.retry_connect,
                    )
                    await broker.close()
                    if stop is not None and stop.is_set():
                        return
                    await asyncio.sleep(self.retry_connect)
            self._brokers.append(broker)
            self._consumers.append(consumer)
            log.info("consuming group %s of bus %s", subscription.group, broker.topology.name)

    @property
    def running(self) -> bool:
        """Every subscription is connected and consuming."""
        return bool(self._consumers) and len(self._consumers) == len(self.subscriptions)

    async def stop(self) -> None:
        """Let handlers in flight finish (and be acknowledged), then disconnect."""
        for consumer in self._consumers:
            await consumer.stop()
        for broker in self._brokers:
            await broker.close()
        self._consumers.clear()
        self._brokers.clear()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set."""
        try:
            await self.start(stop)
            await stop.wait()
        finally:
            await self.stop()
