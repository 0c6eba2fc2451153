"""From the outbox to a bus: the relay publishes translated integration events, confirmed.

:func:`forward_to_bus` registers one after-commit subscriber, ``bus.<name>``, for every domain
event type a :class:`~tidings.integration.translator.Translator` maps. The relay delivers each
committed domain event to it like to any subscriber; the forwarder translates it into the bus's
public events and publishes them, returning only once the broker *confirmed* every one. Only
then does the relay commit the subscriber's checkpoint, so an outbox row counts as delivered
only after confirmation.

The forwarder is a :class:`~tidings.outbox.subscribers.BatchHandler`: the relay hands it a whole
batch of the partition (up to ``RelayConfig.batch_size`` rows), which it publishes in one call,
every message's confirmation in flight at once, then waits for all of them. One confirmation
round trip per batch rather than per event is what lets a relay keep up with a busy outbox.

Failure behaviour follows from the relay:

* broker down, or no confirmation: :class:`~tidings.errors.BrokerError` makes the relay retry
  the row under the subscriber's retry policy (backoff with jitter); the row stays in the log and
  nothing is held in memory. Give the ``bus.<name>`` subscriber a patient policy. A batch that
  fails is published again event by event, so the policy (and the dead letters) apply to the
  row that fails; rows of the batch that the broker had already confirmed go out a second time;
* a crash after the broker confirmed but before the checkpoint committed: the row is published
  again. Translated events have deterministic ids (derived from the domain event id), so
  consumers' inboxes (and JetStream's duplicate window) drop the second copy;
* not allowed by the publish policy: :class:`~tidings.errors.PublishNotAllowed` before anything
  is sent. Install :class:`~tidings.integration.policy.PolicyGuard` in the unit of work too, so
  such an event is refused before commit and never reaches the outbox at all.

Only translated events leave the process: raw domain events are never published.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from tidings.core.dispatch import HandlerContext, Handlers, Timing
from tidings.core.messages import StoredEvent
from tidings.errors import ConfigurationError
from tidings.integration.translator import Translator


class Publishes(Protocol):
    """What the forwarder needs: a blocking, confirmed publish (``BlockingBusPublisher``)."""

    def start(self) -> None: ...

    def publish(self, rows: Sequence[StoredEvent]) -> None: ...


class BusForwarder:
    """The subscriber's handler: translate, then publish with confirmation."""

    def __init__(self, translator: Translator, publisher: Publishes) -> None:
        self.translator = translator
        self.publisher = publisher
        self._started = False
        self._lock = threading.Lock()

    def __call__(self, event: object, ctx: HandlerContext) -> None:
        self._publish(self.translator.to_stored(ctx.envelope))

    def handle_batch(self, contexts: Sequence[HandlerContext]) -> None:
        """Publish a relay batch in one confirmed call (log order kept within the call)."""
        to_stored = self.translator.to_stored
        self._publish([row for ctx in contexts for row in to_stored(ctx.envelope)])

    def _publish(self, rows: Sequence[StoredEvent]) -> None:
        if not rows:
            return  # a mapping may decline (return None) for some events
        self._ensure_started()
        self.publisher.publish(rows)

    def _ensure_started(self) -> None:
        # Started on first use, from the relay's thread: nothing connects at import or wiring.
        with self._lock:
            if not self._started:
                self.publisher.start()
                self._started = True


def forward_to_bus(
    handlers: Handlers,
    translator: Translator,
    publisher: Publishes,
    *,
    name: str | None = None,
) -> str:
    """Subscribe a forwarder for ``translator``'s bus; returns the subscriber name."""
    sources = translator.source_types()
    if not sources:
        raise ConfigurationError(f"translator for bus {translator.bus!r} maps no domain events")
    subscriber = name or f"bus.{translator.bus}"
    forwarder = BusForwarder(translator, publisher)
    for source in sources:
        handlers.add(source, forwarder, when=Timing.AFTER_COMMIT, name=subscriber)
    return subscriber
