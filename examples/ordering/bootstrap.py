"""Wiring the application: one place that builds everything, used by the API, the demo, the
command line and the tests alike.

Persistence: every aggregate is event-sourced, so the event store's log *is* the outbox: the
domain relay follows the events table directly and nothing is written twice. The fulfilment
saga's commands are not events of any aggregate; they go through the outbox table, followed by a
second relay (subscriber ``commands``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from ordering import integration
from ordering.domain.support import Agent, Department
from ordering.handlers import Services, build_handlers
from ordering.loyalty import add_loyalty_rule
from ordering.ports import Carrier, Notifier, PaymentGateway
from ordering.sagas import OrderFulfilment
from tidings import system_clock
from tidings.brokers.forwarding import forward_to_bus
from tidings.brokers.port import Broker
from tidings.brokers.publisher import BlockingBusPublisher
from tidings.brokers.urls import broker_for
from tidings.eventsourcing import EventSourcedRepository, EventStore, EventStoreParticipant
from tidings.integration.policy import PolicyGuard
from tidings.integration.signing import Keyring, Signer
from tidings.outbox import tables as outbox_tables
from tidings.outbox.config import RelayConfig
from tidings.outbox.deadletters import DeadLetters
from tidings.outbox.participant import Doorbell, LogNotifier
from tidings.outbox.relay import Relay
from tidings.outbox.retry import OnFailure, RetryPolicy, SubscriberPolicy
from tidings.persistence import setup
from tidings.persistence.sql import SqlUnitOfWork
from tidings.sagas.sql import SagaRunner
from tidings.sagas.subscriber import OutboxCommands, register_saga

log = logging.getLogger("ordering")

PRODUCER = "ordering"
COMMANDS = "commands"


def default_support_directory() -> tuple[dict[str, Department], dict[str, Agent]]:
    from datetime import time

    departments = {
        "billing": Department("billing", {1: 2, 2: 4, 3: 8, 4: 24}),
        "shipping": Department("shipping", {1: 1, 2: 4, 3: 12, 4: 48}),
    }
    agents = {
        "agent-7": Agent("agent-7", time(9), time(17)),
        "agent-9": Agent("agent-9", time(13), time(21), frozenset(range(6))),
    }
    return departments, agents


class OrderingApp:
    """The application object."""

    def __init__(
        self,
        engine: Engine,
        *,
        payments: PaymentGateway | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], datetime] = system_clock,
        notification_retry: RetryPolicy | None = None,
        listen: bool = True,
        bus_url: str | None = None,
        bus: Callable[[], Broker] | None = None,
        signing_keys: Keyring | None = None,
        node: str | None = None,
    ) -> None:
        """``bus_url`` (``amqp://``, ``nats://``, ``redis://``, ``memory:``) or ``bus`` (a broker
        client factory) makes the relay publish the shipping bus's integration events."""
        #: Relay node name; a restarted process with the same name takes its leases back at once.
        self.node = node
        self.engine = engine
        self.clock = clock
        self.events = EventStoreParticipant()
        self.store = EventStore(engine)
        departments, agents = default_support_directory()
        self.services = Services(
            events=self.events,
            payments=payments or PaymentGateway(),
            notifier=notifier or Notifier(),
            carrier=Carrier(),
            departments=departments,
            agents=agents,
            clock=clock,
        )
        self.handlers = build_handlers(self.services)
        add_loyalty_rule(self.handlers, self.services)
        commands = OutboxCommands(producer=PRODUCER, clock=clock)
        self.saga_subscriber = register_saga(
            self.handlers, OrderFulfilment, sink=commands, clock=clock
        )
        self.sagas = SagaRunner(sessionmaker(engine), [OrderFulfilment], commands, clock=clock)
        # Integration events: the policy is enforced in every unit of work, before commit; with a
        # bus configured, the relay also publishes the translated events, confirmed and signed.
        self.publish_guard = PolicyGuard(integration.policy, [integration.shipping])
        policies = {}
        if bus is None and bus_url is not None:
            bus = functools.partial(broker_for, bus_url, integration.SHIPPING_TOPOLOGY)
        if bus is not None:
            publisher = BlockingBusPublisher(
                bus,
                policy=integration.policy,
                signer=Signer(signing_keys) if signing_keys is not None else None,
            )
            bus_subscriber = forward_to_bus(self.handlers, integration.shipping, publisher)
            # A broker outage must only delay publication: keep retrying, never give up soon.
            policies[bus_subscriber] = SubscriberPolicy(
                retry=RetryPolicy(immediate=1, delayed=50, base_delay=0.2, max_delay=30.0),
                on_failure=OnFailure.PARK,
            )
        self.doorbell = Doorbell()
        self.wakeup = LogNotifier(engine, self.store.schema.events, self.doorbell)
        # A notification outage must not hold orders back: a few quick retries, then the
        # message waits in the dead-letter store until the service is back and it is replayed.
        notification_policy = SubscriberPolicy(
            retry=notification_retry or RetryPolicy(immediate=1, delayed=2, base_delay=0.05),
            on_failure=OnFailure.SKIP,
        )
        domain_subscribers = [n for n in self.handlers.subscribers() if n != COMMANDS]
        self.domain_relay_config = RelayConfig(
            engine,
            self.handlers,
            log=self.store.schema.events,
            subscribers=domain_subscribers,
            policies={"notifications": notification_policy, **policies},
            unit_of_work_factory=self.unit_of_work,
            doorbell=self.doorbell,
            listen=listen,
        )
        self.command_relay_config = RelayConfig(
            engine,
            self.handlers,
            log=outbox_tables.outbox,
            subscribers=[COMMANDS],
            unit_of_work_factory=self.unit_of_work,
            doorbell=self.doorbell,
            listen=listen,
        )
        self._relays: list[Relay] = []
        self._timeouts: threading.Thread | None = None
        self._stop = threading.Event()

    # -- set-up -------------------------------------------------------------------------------

    def create_tables(self) -> None:
        setup.create_tables(self.engine, ["eventstore", "outbox", "sagas"])

    # -- writing ------------------------------------------------------------------------------

    def unit_of_work(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(
            self.engine,
            self.handlers,
            participants=[self.events, self.publish_guard, self.wakeup],
            producer=PRODUCER,
            clock=self.clock,
        )

    def repository(self, uow: SqlUnitOfWork) -> EventSourcedRepository:
        return EventSourcedRepository(uow, self.events)

    # -- delivering ---------------------------------------------------------------------------

    def relays(self) -> list[Relay]:
        if not self._relays:
            self._relays = [
                Relay(self.domain_relay_config, node=f"{self.node}-domain" if self.node else None),
                Relay(
                    self.command_relay_config, node=f"{self.node}-commands" if self.node else None
                ),
            ]
        return self._relays

    def run_until_idle(self, *, max_rounds: int = 1000) -> int:
        """Deliver everything deliverable now (relays and due saga timeouts), in this thread."""
        total = 0
        for _ in range(max_rounds):
            moved = sum(relay.run_until_idle() for relay in self.relays())
            moved += len(self.sagas.fire_due_timeouts())
            total += moved
            if moved == 0:
                return total
        raise RuntimeError(f"still delivering after {max_rounds} rounds")

    def start(self, *, timeout_poll: float = 1.0) -> None:
        """Run both relays and the saga timeout pump in background threads."""
        self._stop.clear()
        for relay in self.relays():
            relay.start()

        def pump() -> None:
            while not self._stop.wait(timeout_poll):
                try:
                    self.sagas.fire_due_timeouts()
                except Exception:  # e.g. the database is away: log it and keep pumping
                    log.exception("saga timeouts failed")

        self._timeouts = threading.Thread(target=pump, name="saga-timeouts", daemon=True)
        self._timeouts.start()

    def stop(self) -> None:
        self._stop.set()
        for relay in self._relays:
            relay.stop()
        if self._timeouts is not None:
            self._timeouts.join(timeout=5)
            self._timeouts = None

    def dead_letters(self) -> DeadLetters:
        return DeadLetters(self.engine, self.store.schema.events)


def from_environment(
    engine: Engine, *, bus_url: str | None = None, node: str | None = None
) -> OrderingApp:
    """The application as a deployed process builds it, configured by environment variables:

    * ``ORDERING_SIGNING_KEY``: hex secret signing published integration events;
    * ``ORDERING_DECLINED_BUYERS``: comma-separated buyers the fake payment gateway declines;
    * ``ORDERING_NOTIFIER_DOWN_FILE``: while this file exists, the fake notifier is down.
    """
    import os

    key = os.environ.get("ORDERING_SIGNING_KEY")
    declined = {b for b in os.environ.get("ORDERING_DECLINED_BUYERS", "").split(",") if b}
    return OrderingApp(
        engine,
        payments=PaymentGateway(declined_buyers=declined),
        notifier=Notifier(down_flag=os.environ.get("ORDERING_NOTIFIER_DOWN_FILE")),
        bus_url=bus_url,
        signing_keys=Keyring({"ordering-1": bytes.fromhex(key)}) if key else None,
        node=node,
    )


def relay_config(engine: Engine) -> RelayConfig:
    """For the operator CLI: ``tidings dlq replay ID --app ordering.bootstrap:relay_config``."""
    return from_environment(engine).domain_relay_config
