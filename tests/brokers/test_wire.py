"""The message format, topology validation, partitioning, and missing-driver errors."""

from __future__ import annotations

import importlib
import sys
from dataclasses import replace

import pytest

from tidings.brokers.port import Topology, partition_of
from tidings.brokers.wire import HEADERS, decode_message, encode_headers
from tidings.errors import ConfigurationError, MessageRejected
from tidings.testing.broker_contract import probe


def test_headers_are_prefixed_metadata_names_and_round_trip() -> None:
    message = replace(probe("s", 3), headers={"x-app": "1"})
    headers = encode_headers(message)
    assert headers["tidings-event-id"] == str(message.event_id)
    assert headers["tidings-stream-version"] == "3"
    assert "tidings-causation-id" not in headers  # absent values are not sent
    assert (
        headers["traceparent"] == f"00-{message.correlation_id.hex}-{message.event_id.hex[16:]}-01"
    )
    back = decode_message(headers, message.payload)
    assert back.metadata() == message.metadata()
    assert back.headers["x-app"] == "1"
    assert set(HEADERS) == set(message.metadata())


def test_metadata_headers_cannot_be_overridden_by_extra_headers() -> None:
    message = replace(probe("s", 1), headers={"tidings-event-type": "evil.Type"})
    assert encode_headers(message)["tidings-event-type"] == "tidings.contract.Probe"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"tidings-event-id": None}, "header tidings-event-id is missing"),
        ({"tidings-event-type": ""}, "header tidings-event-type is missing"),
        ({"tidings-event-version": "0"}, "must be an integer >= 1"),
        ({"tidings-event-version": "-1"}, "must be an integer >= 1"),
        ({"tidings-stream-version": "x"}, "must be an integer >= 0"),
        ({"tidings-occurred-at": "yesterday"}, "not an ISO 8601 timestamp"),
        ({"tidings-occurred-at": "2026-01-01T00:00:00"}, "has no time zone"),
        ({"tidings-correlation-id": "123"}, "is not a UUID"),
        ({"tidings-producer": "p" * 5000}, "characters long"),
    ],
)
def test_bad_headers_are_rejected_with_the_header_named(change, reason) -> None:  # type: ignore[no-untyped-def]
    headers = encode_headers(probe("s", 1))
    for name, value in change.items():
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    with pytest.raises(MessageRejected, match=reason):
        decode_message(headers, b"{}")


def test_a_malformed_traceparent_is_dropped_not_fatal() -> None:
    headers = {**encode_headers(probe("s", 1)), "traceparent": "garbage"}
    assert "traceparent" not in decode_message(headers, b"{}").headers


def test_partitions_are_stable_and_spread() -> None:
    assert partition_of("order-42", 16) == partition_of("order-42", 16)
    assert partition_of(None, 8) == 0
    spread = {partition_of(f"stream-{i}", 8) for i in range(200)}
    assert spread == set(range(8))
    # CRC-32 is the documented function, so other languages can route the same way.
    import zlib

    assert partition_of("order-42", 16) == zlib.crc32(b"order-42") % 16


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"name": "has.dot"}, "bus name"),
        ({"name": "ok", "groups": ("bad group",)}, "group name"),
        ({"name": "ok", "groups": ("a", "a")}, "unique"),
        ({"name": "ok", "partitions": 0}, "partitions must be"),
        ({"name": "ok", "partitions": 5000}, "at most 1024"),
        ({"name": "ok", "redelivery_after": 0}, "redelivery_after"),
        ({"name": "ok", "max_deliveries": True}, "max_deliveries"),
    ],
)
def test_topology_validation(settings, reason) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match=reason):
        Topology(**settings)


def test_unknown_group_is_named() -> None:
    with pytest.raises(
        ConfigurationError, match=r"group 'x' is not declared on bus 'b' \(declared: g\)"
    ):
        Topology(name="b", groups=("g",)).require_group("x")


@pytest.mark.parametrize(
    ("module", "driver", "extra"),
    [
        ("tidings.brokers.rabbitmq", "aio_pika", "tidings[rabbitmq]"),
        ("tidings.brokers.nats", "nats", "tidings[nats]"),
        ("tidings.brokers.redis", "redis", "tidings[redis]"),
    ],
)
def test_a_missing_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str, driver: str, extra: str
) -> None:
    monkeypatch.delitem(sys.modules, module, raising=False)
    for name in list(sys.modules):
        if name == driver or name.startswith(driver + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, driver, None)  # makes `import driver` fail
    with pytest.raises(ConfigurationError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        importlib.import_module(module)
