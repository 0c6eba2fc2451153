"""The message format, topology validation, partitioning, and missing-driver errors."""

from __future__ import annotations

import importlib
import sys
import uuid
from dataclasses import replace
from email.parser import BytesParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.brokers.port import Topology, partition_of
from tidings.brokers.wire import (
    HEADERS,
    _decode_checked,
    decode_message,
    encode_headers,
    normalize_headers,
)
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
        # str.isdigit() accepts these, int() refuses the first and reads the second.
        ({"tidings-event-version": "\u00b2"}, "must be an integer >= 1"),
        ({"tidings-stream-version": "\u0661"}, "must be an integer >= 0"),
        ({"tidings-stream-version": "9" * 20}, "at most 9223372036854775807"),
        ({"tidings-event-version": " 1"}, "must be an integer >= 1"),
        ({"tidings-causation-id": "not-a-uuid"}, "header tidings-causation-id is not a UUID"),
        # uuid.UUID() would read both, as another id: 02345678-... and 01234567-...
        ({"tidings-event-id": " 2345678-1234-5678-1234-567812345678"}, "is not a UUID"),
        ({"tidings-event-id": "1234567_-1234-5678-1234-567812345678"}, "is not a UUID"),
        ({"tidings-event-id": "urn:uuid:12345678-1234-5678-1234-567812345678"}, "is not a UUID"),
        ({"tidings-stream-id": "s" * 1025}, "header tidings-stream-id is 1025 characters long"),
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


def test_optional_headers_may_be_absent_or_empty() -> None:
    headers = encode_headers(probe("s", 1))
    for name in ("tidings-stream-id", "tidings-producer"):
        headers.pop(name)
    headers["tidings-stream-version"] = ""
    message = decode_message(headers, b"{}")
    assert (message.stream_id, message.stream_version, message.producer) == (None, None, None)
    assert message.causation_id is None


def test_the_largest_integer_a_header_may_carry_is_read() -> None:
    headers = {**encode_headers(probe("s", 1)), "tidings-stream-version": str(2**63 - 1)}
    assert decode_message(headers, b"{}").stream_version == 2**63 - 1


@settings(max_examples=300, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from([*HEADERS.values(), "traceparent", "x-app"]),
        st.one_of(
            st.none(), st.text(max_size=40), st.text(alphabet="0123456789-:.+TZ", max_size=40)
        ),
        max_size=4,
    ),
    body=st.binary(max_size=64),
)
def test_any_headers_give_a_message_or_a_rejection_naming_a_header(
    changes: dict[str, str | None], body: bytes
) -> None:
    """Hostile headers never raise anything but MessageRejected (which dead-letters)."""
    headers = encode_headers(probe("s", 1))
    for name, value in changes.items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    reason = ""
    try:
        message = decode_message(headers, body)
    except MessageRejected as rejected:
        reason = rejected.reason
    if reason:
        assert "header tidings-" in reason
    else:
        assert message.payload == body
        assert message.event_version >= 1


def _outcome(decode: Any, headers: dict[str, Any], body: bytes) -> object:
    try:
        return decode(headers, body)
    except Exception as exc:  # values that are not text (outside the contract) included
        return type(exc), str(exc)


@settings(max_examples=500, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from([*HEADERS.values(), "traceparent", "x-app"]),
        st.one_of(
            st.none(),
            st.text(max_size=40),
            st.text(alphabet="0123456789-:.+TZ", max_size=40),
            st.uuids().map(str),
            st.uuids().map(lambda u: u.hex.upper()),
            st.uuids().map(lambda u: "{" + str(u) + "}"),
            st.uuids().map(lambda u: u.bytes),  # not text: refused, though msgspec reads it
            st.uuids(),
            st.sampled_from(["", "0", "1", "\u00b2", "9" * 19, "é" * 1024, "é" * 1025]),
        ),
        max_size=4,
    ),
    causation=st.one_of(st.none(), st.uuids()),
)
def test_the_quick_reading_gives_what_the_checks_give(
    changes: dict[str, Any], causation: uuid.UUID | None
) -> None:
    """decode_message reads well-formed headers in one msgspec call; whatever the headers, its
    message or its rejection (and reason) is the one the header-by-header checks give."""
    headers: dict[str, Any] = encode_headers(replace(probe("s", 1), causation_id=causation))
    for name, value in changes.items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    assert _outcome(decode_message, headers, b"{}") == _outcome(_decode_checked, headers, b"{}")


@pytest.mark.parametrize("name", [*HEADERS.values()])
@pytest.mark.parametrize("value", ["", "é" * 1024, "é" * 1025, "x" * 1025, None])
def test_the_quick_reading_gives_what_the_checks_give_at_the_limits(
    name: str, value: str | None
) -> None:
    headers: dict[str, Any] = encode_headers(replace(probe("s", 1), causation_id=uuid.uuid4()))
    if value is None:
        headers.pop(name)
    else:
        headers[name] = value
    assert _outcome(decode_message, headers, b"{}") == _outcome(_decode_checked, headers, b"{}")


def test_header_objects_from_the_email_parser_keep_their_text() -> None:
    # What nats-py's JetStream get_msg hands back for a value with non-ASCII bytes.
    parsed = BytesParser().parsebytes("reason: got '\u00b2'\r\nplain: x\r\n\r\n".encode())
    assert not isinstance(parsed["reason"], str)
    assert normalize_headers({"reason": parsed["reason"], "plain": parsed["plain"]}) == {
        "reason": "got '\u00b2'",
        "plain": "x",
    }


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
