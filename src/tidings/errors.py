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
    └── StoreError                  a database operation failed (driver errors are translated)
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
