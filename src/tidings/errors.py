"""Every exception tidings raises, in one place.

All of them derive from :class:`TidingsError`, so ``except TidingsError`` catches anything the
library itself signals. Exceptions raised by *your* handlers are never wrapped: they propagate
unchanged (with a note naming the handler and the event), so domain errors keep their type.

Hierarchy::

    TidingsError
    ├── ConfigurationError          the library was set up wrongly (caught at registration)
    │   └── EventDefinitionError    an event class cannot be used (no name, clashing name, ...)
    ├── CodecError                  an event cannot be encoded or decoded
    │   ├── UnknownEventType        no class registered for a stored type name
    │   ├── EventVersionError       stored schema version and registered class disagree
    │   └── PayloadError            the bytes are not valid JSON or do not fit the schema
    ├── UnitOfWorkError             the unit of work was used out of order
    │   └── CascadeLimitExceeded    in-transaction handlers kept recording events (a cycle)
    ├── BrokerError                 a broker operation failed (driver errors are translated)
    │   ├── BrokerUnavailable       the broker cannot be reached, or the connection dropped
    │   ├── PublishNotConfirmed     the broker refused (nack, unroutable) or lost a publication
    │   └── TopologyError           exchanges/queues/streams could not be declared as configured
    ├── MessageRejected             an incoming message is unusable (bad headers or body, too
    │   │                           large, too old): it is dead-lettered with this reason
    │   └── SignatureError          unsigned, forged, tampered, or signed with an unknown key
    ├── PublishNotAllowed           the publish policy forbids this producer/bus/event type
    ├── ProtectionError             sensitive fields cannot be encrypted (no key store, bad field)
    └── StoreError                  a database operation failed (driver errors are translated)
        ├── ConcurrencyError        an append's expected stream version was not the actual one
        ├── StreamNotFound          no event was ever stored for this stream id
        └── UnreadableEvent         a stored event or snapshot row cannot be decoded (also a
                                    CodecError); names the stream, version and type
"""

from __future__ import annotations


class TidingsError(Exception):
    """Root of every exception raised by tidings itself."""


class ConfigurationError(TidingsError):
    """The library was configured or wired incorrectly."""


class EventDefinitionError(ConfigurationError):
    """An event class is not usable as declared."""


class CodecError(TidingsError):
    """An event could not be encoded or decoded."""


class UnknownEventType(CodecError):
    """A stored event names a type that no registered class declares."""

    def __init__(self, type_name: str) -> None:
        super().__init__(
            f"unknown event type {type_name!r}: no class is registered under that name "
            "(declare it with @tidings.event, or add the old name to `aliases=` after a rename)"
        )
        self.type_name = type_name


class EventVersionError(CodecError):
    """A stored event's schema version cannot be turned into the registered class's version."""

    def __init__(self, type_name: str, stored: int, current: int, detail: str = "") -> None:
        message = (
            f"event type {type_name!r}: stored schema version {stored} cannot be read "
            f"as version {current}"
        )
        super().__init__(f"{message}: {detail}" if detail else message)
        self.type_name = type_name
        self.stored_version = stored
        self.current_version = current


class PayloadError(CodecError):
    """The payload is not valid JSON, or does not match the event's schema."""

    def __init__(self, type_name: str, detail: str) -> None:
        super().__init__(f"event type {type_name!r}: {detail}")
        self.type_name = type_name
        self.detail = detail


class UnitOfWorkError(TidingsError):
    """The unit of work was used in a way it does not allow."""


class CascadeLimitExceeded(UnitOfWorkError):
    """In-transaction handlers kept producing new events past the configured bound."""


class StoreError(TidingsError):
    """A storage operation failed; the driver's exception is chained as ``__cause__``."""


class ConcurrencyError(StoreError):
    """An append expected a stream at one version and found it at another; nothing was written.

    ``actual_version`` is ``None`` when the conflict was detected by the database's constraints
    inside a unit of work, where the true version cannot be read back: it is then at least
    ``expected_version + 1``, or (``behind``) lower than ``expected_version``.
    """

    def __init__(
        self,
        stream_id: str,
        expected_version: int,
        actual_version: int | None,
        *,
        behind: bool = False,
    ) -> None:
        if actual_version is not None:
            actual = f"it is at version {actual_version}"
        elif behind:
            actual = f"it has no version {expected_version} yet"
        else:
            actual = f"another writer already stored version {expected_version + 1}"
        super().__init__(
            f"concurrent change to stream {stream_id!r}: expected version {expected_version}, "
            f"but {actual}; nothing was written. Reload the aggregate and retry the command."
        )
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version


class StreamNotFound(StoreError):
    """No event is stored under this stream id (or none at the version or time asked for)."""

    def __init__(self, stream_id: str, detail: str = "no event was ever stored for it") -> None:
        super().__init__(f"stream {stream_id!r} not found: {detail}")
        self.stream_id = stream_id


class UnreadableEvent(StoreError, CodecError):
    """A stored row cannot be turned back into an event (or snapshot); the row is left as is.

    The underlying :class:`CodecError` (unknown type, corrupt payload, failing upcaster) is
    chained as ``__cause__``.
    """

    def __init__(
        self, stream_id: str | None, stream_version: int | None, event_type: str, detail: str
    ) -> None:
        super().__init__(
            f"stored event {event_type!r} at {stream_id!r} version {stream_version} "
            f"cannot be read: {detail}"
        )
        self.stream_id = stream_id
        self.stream_version = stream_version
        self.event_type = event_type


class BrokerError(TidingsError):
    """A message broker operation failed; the driver's exception is chained as ``__cause__``."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached, or the connection dropped during an operation.

    Publications in flight are *not* known to be lost: the caller retries, and consumers
    deduplicate (the inbox) the copies that did arrive.
    """


class PublishNotConfirmed(BrokerError):
    """The broker refused a publication (negative acknowledgement, unroutable message)."""


class TopologyError(BrokerError):
    """Exchanges, queues, streams or consumer groups could not be declared as configured."""


class MessageRejected(TidingsError):
    """An incoming message cannot be handled as sent; it is dead-lettered with :attr:`reason`.

    Raised by decoding and verification, never by handlers' business logic: a handler that
    raises anything else gets the message redelivered.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureError(MessageRejected):
    """The message is unsigned, forged, tampered with, or signed with a key not in the ring."""


class PublishNotAllowed(TidingsError):
    """The declared publish policy does not allow this producer to send this event to this bus."""


class ProtectionError(TidingsError):
    """Sensitive fields cannot be protected as declared (no key store, unsupported field)."""
