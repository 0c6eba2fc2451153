"""Replay: folding stored rows into an aggregate, the hot loop of every load.

Kept apart from the plans because it is tuned: per distinct ``(type, schema version)`` it
resolves once how to decode and which apply method to call, instead of once per event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from tidings.core.aggregate import EventSourcedAggregate
from tidings.core.codec import Codec
from tidings.errors import CodecError, UnreadableEvent


def replay_rows(
    instance: EventSourcedAggregate, stream_id: str, rows: Sequence[Any], codec: Codec
) -> int:
    """Apply ``(version, type, schema version, payload)`` rows; returns the last version.

    The hot loop of every load. Per distinct ``(type, schema version)`` it resolves once how to
    decode (a typed msgspec decoder for current-version dataclass events; the codec, with its
    upcasters, otherwise) and which apply method to call, instead of once per event.
    """
    decoders: dict[tuple[str, int], Callable[[Any], object]] = {}
    appliers: dict[type, Callable[[Any, Any], None] | None] = {}
    version = instance.version
    for version, event_type, event_version, payload in rows:
        key = (event_type, event_version)
        decode = decoders.get(key)
        if decode is None:
            decode = decoders[key] = _decoder(codec, event_type, event_version)
        try:
            event = decode(payload)
        except (CodecError, msgspec.MsgspecError) as exc:
            error = _unreadable(codec, stream_id, version, event_type, event_version, payload, exc)
            raise error from error.__cause__
        event_class = type(event)
        if event_class in appliers:
            apply = appliers[event_class]
        else:
            apply = appliers[event_class] = _applier(type(instance), event_class)
        if apply is not None:
            apply(instance, event)
    instance.version = version
    return version


def _decoder(codec: Codec, event_type: str, event_version: int) -> Callable[[Any], object]:
    try:
        spec = codec.registry.spec(event_type)
    except CodecError:
        spec = None
    if spec is not None and event_version == spec.version and not spec.is_pydantic:
        return msgspec.json.Decoder(spec.cls).decode

    def through_codec(payload: Any) -> object:
        return codec.decode(event_type, event_version, payload)

    return through_codec


def _unreadable(
    codec: Codec,
    stream_id: str,
    version: int,
    event_type: str,
    event_version: int,
    payload: Any,
    exc: Exception,
) -> UnreadableEvent:
    if not isinstance(exc, CodecError):
        # The fast decoder failed: let the codec say why, in its own words.
        try:
            codec.decode(event_type, event_version, payload)
        except CodecError as detailed:
            exc = detailed
    error = UnreadableEvent(stream_id, version, event_type, str(exc))
    error.__cause__ = exc
    return error


def _applier(
    cls: type[EventSourcedAggregate], event_class: type
) -> Callable[[Any, Any], None] | None:
    for klass in event_class.__mro__:
        found = cls._appliers.get(klass)
        if found is not None:
            return found
    return None
