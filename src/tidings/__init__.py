"""tidings: domain events, delivered with nothing lost and nothing applied twice.

The public API is what ``__all__`` lists; everything else is internal and may change.
"""

from __future__ import annotations

from tidings.core.aggregate import Aggregate, EventSourcedAggregate, applies
from tidings.core.codec import Codec, default_codec
from tidings.core.commit import CommitBatch
from tidings.core.dispatch import HandlerContext, Handlers, Subscription, Timing
from tidings.core.envelope import Envelope, RecordingContext, recording_context, system_clock
from tidings.core.events import EventSpec, event, spec_of
from tidings.core.ids import uuid7
from tidings.core.registry import EventRegistry, default_registry
from tidings.core.unit_of_work import AsyncUnitOfWork, UnitOfWork
from tidings.errors import (
    CascadeLimitExceeded,
    CodecError,
    ConcurrencyError,
    ConfigurationError,
    EventDefinitionError,
    EventVersionError,
    PayloadError,
    StoreError,
    StreamNotFound,
    TidingsError,
    UnitOfWorkError,
    UnknownEventType,
    UnreadableEvent,
)
from tidings.persistence.memory import AsyncInMemoryUnitOfWork, InMemoryStore, InMemoryUnitOfWork

__version__ = "0.1.0"

__all__ = [
    "Aggregate",
    "AsyncInMemoryUnitOfWork",
    "AsyncUnitOfWork",
    "CascadeLimitExceeded",
    "Codec",
    "CodecError",
    "CommitBatch",
    "ConcurrencyError",
    "ConfigurationError",
    "Envelope",
    "EventDefinitionError",
    "EventRegistry",
    "EventSourcedAggregate",
    "EventSpec",
    "EventVersionError",
    "HandlerContext",
    "Handlers",
    "InMemoryStore",
    "InMemoryUnitOfWork",
    "PayloadError",
    "RecordingContext",
    "StoreError",
    "StreamNotFound",
    "Subscription",
    "TidingsError",
    "Timing",
    "UnitOfWork",
    "UnitOfWorkError",
    "UnknownEventType",
    "UnreadableEvent",
    "__version__",
    "applies",
    "default_codec",
    "default_registry",
    "event",
    "recording_context",
    "spec_of",
    "system_clock",
    "uuid7",
]
