"""Snapshots: a saved state of an aggregate at a stream version, to shorten replays.

An aggregate opts in by implementing :class:`SupportsSnapshots`: ``to_snapshot()`` returns its
state as an instance of a class declared with :func:`tidings.event` (so the state has a type name
and a schema version, and old snapshots are *upcast* through the same registry and codec as
events), and ``from_snapshot(id, version, state)`` rebuilds the aggregate from it::

    @event(name="Account.State", version=2)
    class AccountState:
        balance: Decimal
        owner: str

    class Account(EventSourcedAggregate):
        def to_snapshot(self) -> AccountState: ...
        @classmethod
        def from_snapshot(cls, id, version, state: AccountState) -> Account: ...

A :class:`SnapshotPolicy` decides when to take one: every N events, or by a callable. Snapshots
are written in the same transaction as the events that made them due. A snapshot is only ever an
optimization: if one cannot be read (unknown type, failing upcaster, ``from_snapshot`` raising),
it is ignored with a :class:`SnapshotIgnored` warning and the stream is replayed from the start.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, Self, runtime_checkable

from tidings.core.aggregate import EventSourcedAggregate
from tidings.core.codec import Codec
from tidings.core.events import spec_of
from tidings.errors import ConfigurationError

logger = logging.getLogger("tidings.eventsourcing.snapshots")


class SnapshotIgnored(UserWarning):
    """A stored snapshot could not be used; the stream was replayed in full instead."""


@runtime_checkable
class SupportsSnapshots(Protocol):
    def to_snapshot(self) -> object: ...

    @classmethod
    def from_snapshot(cls, id: Any, version: int, state: Any) -> Self: ...


class SnapshotPolicy:
    """When to snapshot: every ``every`` events, or whenever ``when(aggregate, new)`` says so.

    ``new`` is the number of events the aggregate is about to append.
    """

    def __init__(
        self,
        every: int | None = None,
        *,
        when: Callable[[EventSourcedAggregate, int], bool] | None = None,
    ) -> None:
        if (every is None) == (when is None):
            raise ConfigurationError("SnapshotPolicy needs exactly one of every= or when=")
        if every is not None and (isinstance(every, bool) or every < 1):
            raise ConfigurationError(f"SnapshotPolicy(every=) must be >= 1, got {every!r}")
        self.every = every
        self.when = when

    def due(self, aggregate: EventSourcedAggregate, version_before: int) -> bool:
        if not isinstance(aggregate, SupportsSnapshots):
            return False
        version_after = aggregate.version
        if self.every is not None:
            # Crossing a multiple of N, not landing on one: a batch may jump past it.
            return version_before // self.every != version_after // self.every
        assert self.when is not None
        return self.when(aggregate, version_after - version_before)


def snapshot_row(aggregate: EventSourcedAggregate, codec: Codec) -> dict[str, Any]:
    """Insert parameters for a snapshot of ``aggregate`` at its current version."""
    if not isinstance(aggregate, SupportsSnapshots):
        raise ConfigurationError(
            f"{type(aggregate).__qualname__} cannot be snapshotted: "
            "implement to_snapshot() and from_snapshot()"
        )
    state = aggregate.to_snapshot()
    spec = spec_of(type(state))
    return {
        "stream_id": aggregate.stream_id,
        "stream_version": aggregate.version,
        "state_type": spec.name,
        "state_version": spec.version,
        "state": codec.encode_payload(state, spec),
        "taken_at": datetime.now(UTC),
    }


def restore(
    cls: type[EventSourcedAggregate],
    id: Any,
    row: Any,
    codec: Codec,
) -> EventSourcedAggregate | None:
    """The aggregate rebuilt from a snapshot row, or None (with a warning) if it is unusable.

    ``row`` is ``(stream_id, stream_version, state_type, state_version, state)``.
    """
    if not issubclass(cls, SupportsSnapshots):
        return None
    stream_id, stream_version, state_type, state_version, payload = row
    try:
        state = codec.decode(state_type, state_version, bytes(payload))
        instance = cls.from_snapshot(id, int(stream_version), state)
        if not isinstance(instance, EventSourcedAggregate):
            raise TypeError(f"from_snapshot returned {type(instance).__name__}")
        instance.version = int(stream_version)
        return instance
    except Exception as exc:
        message = (
            f"snapshot of {stream_id!r} at version {stream_version} "
            f"({state_type!r} v{state_version}) ignored, replaying the stream instead: "
            f"{type(exc).__name__}: {exc}"
        )
        logger.warning(message)
        warnings.warn(message, SnapshotIgnored, stacklevel=4)
        return None
