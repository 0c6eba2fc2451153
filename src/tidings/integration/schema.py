"""Contracts for other teams and languages: JSON Schema per public event, AsyncAPI per system.

:func:`export_documents` turns translators (the buses and the integration events they publish)
into a set of documents:

* ``<type name>.v<version>.schema.json``: a JSON Schema (draft 2020-12) of each public event's
  payload, one file per version, so several versions can be published side by side;
* ``asyncapi.json``: an AsyncAPI 3.0 document with one channel per bus, one message per public
  event version (payload schema and the ``tidings-*`` / ``traceparent`` headers), and a *send*
  operation per bus.

Schemas come from msgspec for dataclasses (and from pydantic for pydantic models).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from tidings.brokers.wire import HEADERS, TRACEPARENT
from tidings.core.events import EventSpec, spec_of
from tidings.integration.signing import KEY_ID_HEADER, SIGNATURE_HEADER, SIGNED_AT_HEADER
from tidings.integration.translator import BUS_HEADER, Translator

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_FILE = "asyncapi.json"


def message_key(spec: EventSpec) -> str:
    """A component name for one event version (AsyncAPI allows ``[A-Za-z0-9._-]``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{spec.name}.v{spec.version}")


def schema_file_name(spec: EventSpec) -> str:
    return f"{message_key(spec)}.schema.json"


def event_schema(cls: type) -> dict[str, Any]:
    """A self-contained JSON Schema of one event class's payload."""
    spec = spec_of(cls)
    if spec.is_pydantic:
        body: dict[str, Any] = cls.model_json_schema()  # type: ignore[attr-defined]
    else:
        body = msgspec.json.schema(cls)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": schema_file_name(spec),
        "title": spec.name,
        "description": f"{spec.name}, schema version {spec.version}",
        "x-tidings-event-type": spec.name,
        "x-tidings-event-version": spec.version,
        **body,
    }


def _published(translators: Iterable[Translator]) -> dict[str, list[type]]:
    buses: dict[str, list[type]] = {}
    for translator in translators:
        types = buses.setdefault(translator.bus, [])
        for cls in translator.published_types():
            if cls not in types:
                types.append(cls)
    return buses


def _headers_schema() -> dict[str, Any]:
    text = {"type": "string"}
    properties: dict[str, Any] = {name: dict(text) for name in HEADERS.values()}
    properties[HEADERS["event_id"]] = {"type": "string", "format": "uuid"}
    properties[HEADERS["correlation_id"]] = {"type": "string", "format": "uuid"}
    properties[HEADERS["causation_id"]] = {"type": "string", "format": "uuid"}
    properties[HEADERS["occurred_at"]] = {"type": "string", "format": "date-time"}
    properties[HEADERS["event_version"]] = {"type": "string", "pattern": "^[1-9][0-9]*$"}
    properties[HEADERS["stream_version"]] = {"type": "string", "pattern": "^[0-9]+$"}
    properties[TRACEPARENT] = {
        "type": "string",
        "description": "W3C trace context",
        "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
    }
    properties[BUS_HEADER] = dict(text)
    properties[KEY_ID_HEADER] = {"type": "string", "description": "signing key id"}
    properties[SIGNED_AT_HEADER] = {"type": "string", "format": "date-time"}
    properties[SIGNATURE_HEADER] = {
        "type": "string",
        "description": "base64url HMAC-SHA256, see tidings.integration.signing",
    }
    return {
        "type": "object",
        "properties": properties,
        "required": [
            HEADERS[name]
            for name in ("event_id", "event_type", "event_version", "occurred_at", "correlation_id")
        ],
    }


def asyncapi_document(
    translators: Iterable[Translator],
    *,
    title: str = "tidings integration events",
    version: str = "1.0.0",
    servers: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the buses and their public events."""
    buses = _published(translators)
    every_type = [cls for types in buses.values() for cls in types]
    plain = [cls for cls in every_type if not spec_of(cls).is_pydantic]
    _, components = msgspec.json.schema_components(
        plain, ref_template="#/components/schemas/{name}"
    )
    schemas: dict[str, Any] = dict(components)
    messages: dict[str, Any] = {}
    for cls in every_type:
        spec = spec_of(cls)
        key = message_key(spec)
        if spec.is_pydantic:
            model_schema = cls.model_json_schema(  # type: ignore[attr-defined]
                ref_template="#/components/schemas/{model}"
            )
            schemas.update(model_schema.pop("$defs", {}))
            schemas[key] = model_schema
        else:
            schemas[key] = {"$ref": f"#/components/schemas/{cls.__name__}"}
        messages[key] = {
            "name": spec.name,
            "title": f"{spec.name} v{spec.version}",
            "contentType": "application/json",
            "headers": {"$ref": "#/components/schemas/tidings-headers"},
            "payload": {"$ref": f"#/components/schemas/{key}"},
            "x-tidings-event-version": spec.version,
        }
    schemas["tidings-headers"] = _headers_schema()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for bus, types in buses.items():
        keys = [message_key(spec_of(cls)) for cls in types]
        channels[bus] = {
            "address": bus,
            "description": f"the {bus!r} bus",
            "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in keys},
        }
        operations[f"send-{bus}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{bus}"},
            "messages": [{"$ref": f"#/channels/{bus}/messages/{key}"} for key in keys],
        }
    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {"title": title, "version": version},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
    if servers:
        document["servers"] = {name: dict(server) for name, server in servers.items()}
    return document


def export_documents(
    translators: Iterable[Translator], *, title: str = "tidings integration events"
) -> dict[str, dict[str, Any]]:
    """File name -> JSON document, for every public event and the AsyncAPI document."""
    translators = list(translators)
    documents: dict[str, dict[str, Any]] = {}
    for types in _published(translators).values():
        for cls in types:
            documents[schema_file_name(spec_of(cls))] = event_schema(cls)
    documents[ASYNCAPI_FILE] = asyncapi_document(translators, title=title)
    return documents
