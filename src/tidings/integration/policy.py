"""Who may say what: a declared policy of producers, buses and integration event types.

::

    policy = (
        PublishPolicy()
        .allow("ordering", "orders", OrderPlacedV1, OrderPlacedV2)
        .allow("billing", "payments", "billing.PaymentTaken@1")   # by name, one version
    )

An event type is given as a class (that version only), a ``"name@version"`` string, or a bare
``"name"`` (every version). :meth:`PublishPolicy.check` raises
:class:`~tidings.errors.PublishNotAllowed` naming the producer, the bus, the event and what the
producer *is* allowed, so a mistake is obvious from the message alone.

It is enforced twice:

* in the unit of work, before commit, by :class:`PolicyGuard`: pass it in
  ``participants=[guard]`` to a SQL unit of work (it contributes no statements; it raises while
  the transaction is still open, so nothing is written), or :meth:`PolicyGuard.install` it as an
  in-transaction handler on any unit of work;
* by the relay right before sending (:meth:`PublishPolicy.check_stored`), so rows written by
  older code or by hand cannot slip out either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidings.core.dispatch import HandlerContext, Handlers, Timing
from tidings.core.envelope import Envelope
from tidings.core.events import spec_of
from tidings.core.messages import StoredEvent
from tidings.errors import ConfigurationError, PublishNotAllowed
from tidings.integration.translator import Translator

if TYPE_CHECKING:
    from sqlalchemy.exc import DBAPIError

    from tidings.core.commit import CommitBatch
    from tidings.errors import TidingsError


@dataclass(frozen=True, slots=True)
class Grant:
    """One permission: ``producer`` may publish ``event_types`` to ``bus``."""

    producer: str
    bus: str
    #: ``"name"`` (any version) or ``"name@version"``.
    event_types: frozenset[str]

    def covers(self, event_type: str, version: int) -> bool:
        return event_type in self.event_types or f"{event_type}@{version}" in self.event_types


def _type_key(event_type: str | type) -> str:
    if isinstance(event_type, type):
        spec = spec_of(event_type)
        return f"{spec.name}@{spec.version}"
    if not event_type or not isinstance(event_type, str):
        raise ConfigurationError(f"not an event type: {event_type!r}")
    name, at, version = event_type.partition("@")
    if at and (not version.isdigit() or int(version) < 1 or not name):
        raise ConfigurationError(f"{event_type!r}: expected 'name' or 'name@version'")
    return event_type


class PublishPolicy:
    """The set of grants; anything not granted is forbidden."""

    def __init__(self, grants: Iterable[Grant] = ()) -> None:
        self._grants: list[Grant] = list(grants)

    def allow(self, producer: str, bus: str, *event_types: str | type) -> PublishPolicy:
        """Grant ``producer`` the right to publish ``event_types`` on ``bus`` (chainable)."""
        if not producer or not bus:
            raise ConfigurationError("a grant needs a producer and a bus")
        if not event_types:
            raise ConfigurationError(f"grant for {producer!r} on {bus!r} lists no event types")
        self._grants.append(Grant(producer, bus, frozenset(_type_key(t) for t in event_types)))
        return self

    @property
    def grants(self) -> list[Grant]:
        return list(self._grants)

    def allows(self, producer: str | None, bus: str, event_type: str, version: int) -> bool:
        return producer is not None and any(
            grant.producer == producer and grant.bus == bus and grant.covers(event_type, version)
            for grant in self._grants
        )

    def check(self, producer: str | None, bus: str, event_type: str, version: int) -> None:
        if self.allows(producer, bus, event_type, version):
            return
        if producer is None:
            raise PublishNotAllowed(
                f"{event_type} v{version} on bus {bus!r} has no producer; give the unit of work "
                "producer=... so the publish policy can be applied"
            )
        allowed = sorted(
            f"{t} on {g.bus!r}"
            for g in self._grants
            if g.producer == producer
            for t in g.event_types
        )
        raise PublishNotAllowed(
            f"producer {producer!r} may not publish {event_type} v{version} to bus {bus!r}; "
            f"it may publish: {', '.join(allowed) if allowed else 'nothing'}"
        )

    def check_stored(self, stored: StoredEvent, bus: str) -> None:
        """The relay's check before sending a stored row to ``bus``."""
        self.check(stored.producer, bus, stored.event_type, stored.event_version)


class PolicyGuard:
    """Checks, inside the unit of work, every integration event its commit would publish.

    A :class:`~tidings.persistence.sql.CommitParticipant`: ``statements()`` runs while the
    transaction is open, before commit, and raises :class:`PublishNotAllowed` if any
    translation of the batch's events is not allowed, so the whole commit rolls back.
    """

    def __init__(
        self,
        policy: PublishPolicy,
        translators: Sequence[Translator],
        *,
        producer: str | None = None,
    ) -> None:
        self.policy = policy
        self.translators = list(translators)
        #: Overrides the envelopes' producer (normally set by the unit of work's producer=).
        self.producer = producer

    def check(self, envelope: Envelope[Any]) -> None:
        for translator in self.translators:
            for public in translator.translate(envelope):
                self.policy.check(
                    self.producer or public.producer,
                    translator.bus,
                    public.event_type,
                    public.event_version,
                )

    # -- CommitParticipant -------------------------------------------------------------------

    def statements(self, batch: CommitBatch) -> list[Any]:
        for envelope in batch.envelopes:
            self.check(envelope)
        return []

    def translate(self, error: DBAPIError) -> TidingsError | None:
        return None

    # -- any unit of work ----------------------------------------------------------------------

    def install(self, handlers: Handlers) -> None:
        """Register as an in-transaction handler: works on every unit of work, SQL or not."""

        def check_before_commit(event: object, context: HandlerContext) -> None:
            self.check(context.envelope)

        handlers.add(
            object, check_before_commit, when=Timing.IN_TRANSACTION, name="tidings.publish-policy"
        )
