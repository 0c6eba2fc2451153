"""Serialization of event payloads: one codec, JSON via msgspec, typed and validated on decode.

msgspec was chosen over orjson by measurement (``bench/codec.py``): it encodes dataclasses
directly and decodes *and validates* into the target class in one pass, where orjson needs a
separate conversion and validation step. Round trips are exact for UUID, datetime, date, Decimal,
enums, nested dataclasses and tuples. Pydantic models use pydantic's own JSON methods.

The payload holds only the event's fields; the type name and schema version travel beside it (in
columns or headers), so an upcaster can rewrite an old payload before it is typed.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tidings.core.events import EventSpec, spec_of
from tidings.core.registry import EventRegistry, default_registry
from tidings.errors import CodecError, EventVersionError, PayloadError


class Codec:
    """Encodes events to ``(type name, version, bytes)`` and back."""

    def __init__(self, registry: EventRegistry | None = None) -> None:
        self.registry = registry if registry is not None else default_registry
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoders: dict[type, msgspec.json.Decoder[Any]] = {}
        self._raw = msgspec.json.Decoder(dict[str, Any])

    def encode(self, event: object) -> tuple[str, int, bytes]:
        spec = spec_of(type(event))
        return spec.name, spec.version, self.encode_payload(event, spec)

    def encode_payload(self, event: object, spec: EventSpec | None = None) -> bytes:
        spec = spec if spec is not None else spec_of(type(event))
        try:
            if spec.is_pydantic:
                return event.model_dump_json().encode()  # type: ignore[attr-defined,no-any-return]
            return self._encoder.encode(event)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise CodecError(f"event type {spec.name!r} cannot be encoded: {exc}") from exc

    def decode(self, type_name: str, version: int, payload: bytes | str) -> object:
        """Decode a stored payload into the registered class, upcasting older versions."""
        spec = self.registry.spec(type_name)
        if version == spec.version:
            return self._decode_typed(spec, payload)
        if version > spec.version:
            raise EventVersionError(
                spec.name,
                version,
                spec.version,
                "it was written by newer code; deploy the newer event class to read it",
            )
        data = self.decode_raw(spec.name, payload)
        return self.from_dict(spec, self.upcast(spec, version, data))

    def upcast(self, spec: EventSpec, version: int, data: dict[str, Any]) -> dict[str, Any]:
        for step in range(version, spec.version):
            fn = self.registry.upcaster_for(spec.name, step)
            if fn is None:
                raise EventVersionError(
                    spec.name, version, spec.version, f"no upcaster from version {step}"
                )
            try:
                data = fn(dict(data))
            except Exception as exc:
                raise EventVersionError(
                    spec.name,
                    version,
                    spec.version,
                    f"upcaster from version {step} raised {type(exc).__name__}: {exc}",
                ) from exc
            if not isinstance(data, dict):
                raise EventVersionError(
                    spec.name,
                    version,
                    spec.version,
                    f"upcaster from version {step} returned {type(data).__name__}, not a dict",
                )
        return data

    def decode_raw(self, type_name: str, payload: bytes | str) -> dict[str, Any]:
        try:
            return self._raw.decode(payload)
        except msgspec.ValidationError as exc:
            raise PayloadError(type_name, f"payload is not a JSON object: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise PayloadError(type_name, f"payload is not valid JSON: {exc}") from exc

    def from_dict(self, spec: EventSpec, data: dict[str, Any]) -> object:
        try:
            if spec.is_pydantic:
                return spec.cls.model_validate(data)  # type: ignore[attr-defined]
            return msgspec.convert(data, spec.cls)
        except msgspec.ValidationError as exc:
            raise PayloadError(spec.name, f"payload does not match the schema: {exc}") from exc
        except Exception as exc:  # pydantic.ValidationError, without importing pydantic
            raise PayloadError(spec.name, f"payload does not match the schema: {exc}") from exc

    def _decode_typed(self, spec: EventSpec, payload: bytes | str) -> object:
        if spec.is_pydantic:
            try:
                return spec.cls.model_validate_json(payload)  # type: ignore[attr-defined]
            except Exception as exc:
                raise PayloadError(spec.name, f"payload does not match the schema: {exc}") from exc
        decoder = self._decoders.get(spec.cls)
        if decoder is None:
            decoder = self._decoders[spec.cls] = msgspec.json.Decoder(spec.cls)
        try:
            return decoder.decode(payload)
        except msgspec.ValidationError as exc:
            raise PayloadError(spec.name, f"payload does not match the schema: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise PayloadError(spec.name, f"payload is not valid JSON: {exc}") from exc

    # Headers and other small JSON documents share the same fast encoder.
    def dumps(self, value: object) -> bytes:
        return self._encoder.encode(value)

    def loads(self, data: bytes | str) -> Any:
        return msgspec.json.decode(data)


default_codec = Codec()
