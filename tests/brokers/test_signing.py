"""Signatures: what is accepted, and the exact reason for everything that is not."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from tidings.brokers.wire import decode_message, encode_headers
from tidings.errors import ConfigurationError, MessageRejected, SignatureError
from tidings.integration.signing import (
    SIGNATURE_HEADER,
    Keyring,
    Signer,
    SigningKey,
    Verifier,
    canonical,
)
from tidings.testing.broker_contract import probe

OLD = SigningKey("2025-q4", os.urandom(32))
NEW = SigningKey("2026-q1", os.urandom(32))


def test_a_signed_message_verifies_after_crossing_the_wire() -> None:
    signed = Signer(Keyring([OLD])).sign(probe("s", 1))
    received = decode_message(encode_headers(signed), signed.payload)
    Verifier(Keyring([OLD])).verify(received)


def test_rotation_old_and_new_keys_verify_while_both_are_in_the_ring() -> None:
    ring = Keyring([OLD, NEW], active="2025-q4")
    verifier = Verifier(Keyring([OLD, NEW]))
    before = Signer(ring).sign(probe("s", 1))
    ring.activate("2026-q1")
    after = Signer(ring).sign(probe("s", 2))
    assert before.headers["tidings-key-id"] == "2025-q4"
    assert after.headers["tidings-key-id"] == "2026-q1"
    verifier.verify(before)
    verifier.verify(after)
    verifier.keyring.activate("2026-q1")
    verifier.keyring.retire("2025-q4")
    with pytest.raises(SignatureError, match="unknown key '2025-q4'"):
        verifier.verify(before)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda m: replace(m, payload=m.payload.replace(b'"n":1', b'"n":2')), "does not match"),
        (lambda m: replace(m, producer="someone-else"), "does not match"),
        (lambda m: replace(m, stream_version=7), "does not match"),
        (lambda m: replace(m, event_type="other.Type"), "does not match"),
        (lambda m: replace(m, event_id=uuid4()), "does not match"),
        (
            lambda m: replace(
                m, headers={**m.headers, "tidings-signed-at": "2020-01-01T00:00:00+00:00"}
            ),
            "does not match",
        ),
        (lambda m: replace(m, headers={**m.headers, SIGNATURE_HEADER: "x" * 43}), "does not match"),
        (
            lambda m: replace(
                m, headers={k: v for k, v in m.headers.items() if k != SIGNATURE_HEADER}
            ),
            "not signed",
        ),
        (lambda m: replace(m, headers={}), "not signed"),
        (
            lambda m: replace(m, headers={**m.headers, "tidings-key-id": "nope"}),
            "unknown key 'nope'",
        ),
    ],
)
def test_tampered_or_forged_messages_are_rejected(tamper, reason) -> None:  # type: ignore[no-untyped-def]
    signed = Signer(Keyring([OLD])).sign(probe("s", 1))
    with pytest.raises(SignatureError, match=reason):
        Verifier(Keyring([OLD])).verify(tamper(signed))


def test_a_forger_with_another_key_under_a_known_id_is_rejected() -> None:
    forged_key = SigningKey("2025-q4", os.urandom(32))
    forged = Signer(Keyring([forged_key])).sign(probe("s", 1))
    with pytest.raises(SignatureError, match="does not match"):
        Verifier(Keyring([OLD])).verify(forged)


def test_old_messages_are_rejected_as_replays_and_future_ones_as_suspicious() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    verifier = Verifier(Keyring([OLD]), max_age=timedelta(minutes=10), clock=lambda: now)
    old = Signer(Keyring([OLD]), clock=lambda: now - timedelta(minutes=11)).sign(probe("s", 1))
    with pytest.raises(MessageRejected, match="possible replay"):
        verifier.verify(old)
    future = Signer(Keyring([OLD]), clock=lambda: now + timedelta(hours=1)).sign(probe("s", 1))
    with pytest.raises(MessageRejected, match="in the future"):
        verifier.verify(future)
    recent = Signer(Keyring([OLD]), clock=lambda: now - timedelta(minutes=9)).sign(probe("s", 1))
    verifier.verify(recent)


def test_canonical_form_is_stable_and_covers_the_payload_hash() -> None:
    message = probe("s", 1)
    first = canonical(message, "k", "2026-01-01T00:00:00+00:00")
    assert first == canonical(message, "k", "2026-01-01T00:00:00+00:00")
    assert first.startswith(b'["tidings-sig-v1","k",')
    assert canonical(replace(message, payload=b"{}"), "k", "2026-01-01T00:00:00+00:00") != first


def test_keys_are_validated_and_never_printed() -> None:
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        SigningKey("short", b"secret")
    with pytest.raises(ConfigurationError, match="not in the ring"):
        Keyring([OLD], active="missing")
    with pytest.raises(ConfigurationError, match="is active"):
        Keyring([OLD]).retire("2025-q4")
    with pytest.raises(ConfigurationError, match="empty"):
        _ = Keyring([]).active
    assert OLD.secret.hex() not in repr(OLD)
