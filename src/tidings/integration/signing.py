"""Signed messages: HMAC-SHA256 over the envelope metadata and the payload, with key rotation.

The publisher signs each message with the *active* key of its :class:`Keyring`; the message
carries three headers: ``tidings-key-id`` (which key), ``tidings-signed-at`` (when) and
``tidings-signature``. A consumer's :class:`Verifier` rejects, with
:class:`~tidings.errors.SignatureError`, any message that is unsigned, signed with a key its ring
does not hold, or whose metadata or payload was changed after signing; and with
:class:`~tidings.errors.MessageRejected` a message signed longer ago than ``max_age`` (a replay
of an old capture). A replay of a recent message is caught by the consumer's inbox: its id was
already recorded, so it is acknowledged without running the handler.

Rotation: add the new key to every consumer's ring first, then make it active on the
publishers, then retire the old key once no message signed with it can still be in flight.

What is signed (version 1), as a compact JSON array::

    ["tidings-sig-v1", key id, signed at, event id, event type, event version, stream id,
     stream version, occurred at, correlation id, causation id, producer, sha256(payload) hex]

with absent values as empty strings and timestamps in ISO 8601, so other languages can verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from tidings.core.envelope import Clock, system_clock
from tidings.core.messages import StoredEvent
from tidings.errors import ConfigurationError, MessageRejected, SignatureError

KEY_ID_HEADER = "tidings-key-id"
SIGNED_AT_HEADER = "tidings-signed-at"
SIGNATURE_HEADER = "tidings-signature"
_SCHEME = "tidings-sig-v1"
MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class SigningKey:
    key_id: str
    secret: bytes = b""

    def __post_init__(self) -> None:
        if not self.key_id or len(self.key_id) > 100 or not self.key_id.isprintable():
            raise ConfigurationError("a signing key id must be 1-100 printable characters")
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"signing key {self.key_id!r}: the secret must be at least {MIN_SECRET_BYTES} "
                f"bytes (got {len(self.secret)}); use secrets.token_bytes(32)"
            )

    def __repr__(self) -> str:  # never print secrets
        return f"SigningKey({self.key_id!r})"


class Keyring:
    """Keys by id, and which one signs new messages."""

    def __init__(
        self, keys: Iterable[SigningKey] | Mapping[str, bytes], active: str | None = None
    ) -> None:
        if isinstance(keys, Mapping):
            keys = [SigningKey(key_id, secret) for key_id, secret in keys.items()]
        self._keys: dict[str, SigningKey] = {}
        for key in keys:
            self.add(key)
        if active is not None:
            self.activate(active)
        else:
            self._active = next(iter(self._keys), None)

    def add(self, key: SigningKey) -> None:
        existing = self._keys.get(key.key_id)
        if existing is not None and existing.secret != key.secret:
            raise ConfigurationError(f"key id {key.key_id!r} is already in the ring")
        self._keys[key.key_id] = key

    def activate(self, key_id: str) -> None:
        if key_id not in self._keys:
            raise ConfigurationError(f"cannot activate key {key_id!r}: it is not in the ring")
        self._active = key_id

    def retire(self, key_id: str) -> None:
        if key_id == self._active:
            raise ConfigurationError(f"key {key_id!r} is active; activate another one first")
        self._keys.pop(key_id, None)

    @property
    def active(self) -> SigningKey:
        if self._active is None:
            raise ConfigurationError("the keyring is empty: add a signing key")
        return self._keys[self._active]

    def get(self, key_id: str) -> SigningKey | None:
        return self._keys.get(key_id)

    def key_ids(self) -> list[str]:
        return sorted(self._keys)


def canonical(stored: StoredEvent, key_id: str, signed_at: str) -> bytes:
    """The bytes that are signed (see the module docstring)."""

    def text(value: object) -> str:
        if value is None:
            return ""
        return value.isoformat() if isinstance(value, datetime) else str(value)

    fields = [
        _SCHEME,
        key_id,
        signed_at,
        text(stored.event_id),
        stored.event_type,
        text(stored.event_version),
        text(stored.stream_id),
        text(stored.stream_version),
        text(stored.occurred_at),
        text(stored.correlation_id),
        text(stored.causation_id),
        text(stored.producer),
        hashlib.sha256(stored.payload).hexdigest(),
    ]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()


def _mac(secret: bytes, message: bytes) -> str:
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class Signer:
    """Adds signature headers to outgoing messages (the relay signs right before publishing)."""

    def __init__(self, keyring: Keyring, *, clock: Clock = system_clock) -> None:
        self.keyring = keyring
        self.clock = clock

    def sign(self, stored: StoredEvent) -> StoredEvent:
        key = self.keyring.active
        signed_at = self.clock().isoformat()
        headers = dict(stored.headers)
        headers[KEY_ID_HEADER] = key.key_id
        headers[SIGNED_AT_HEADER] = signed_at
        headers[SIGNATURE_HEADER] = _mac(key.secret, canonical(stored, key.key_id, signed_at))
        return replace(stored, headers=headers)


class Verifier:
    """Checks incoming messages; raises the reason they must be dead-lettered."""

    def __init__(
        self,
        keyring: Keyring,
        *,
        max_age: timedelta | None = timedelta(hours=24),
        max_clock_skew: timedelta = timedelta(minutes=5),
        clock: Clock = system_clock,
    ) -> None:
        self.keyring = keyring
        self.max_age = max_age
        self.max_clock_skew = max_clock_skew
        self.clock = clock

    def verify(self, stored: StoredEvent) -> None:
        what = stored.describe()
        key_id = stored.headers.get(KEY_ID_HEADER)
        signature = stored.headers.get(SIGNATURE_HEADER)
        signed_at = stored.headers.get(SIGNED_AT_HEADER)
        if not key_id or not signature or not signed_at:
            missing = [
                name
                for name, value in (
                    (KEY_ID_HEADER, key_id),
                    (SIGNED_AT_HEADER, signed_at),
                    (SIGNATURE_HEADER, signature),
                )
                if not value
            ]
            raise SignatureError(f"{what} is not signed (missing {', '.join(missing)})")
        key = self.keyring.get(key_id)
        if key is None:
            raise SignatureError(
                f"{what} is signed with unknown key {key_id[:100]!r} "
                f"(this consumer knows {', '.join(self.keyring.key_ids()) or 'no keys'})"
            )
        expected = _mac(key.secret, canonical(stored, key_id, signed_at))
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise SignatureError(
                f"{what}: signature does not match (forged, or metadata/payload changed after "
                f"signing with key {key_id!r})"
            )
        try:
            when = datetime.fromisoformat(signed_at)
        except ValueError:
            raise SignatureError(f"{what}: {SIGNED_AT_HEADER} is not a timestamp") from None
        if when.tzinfo is None:
            raise SignatureError(f"{what}: {SIGNED_AT_HEADER} has no time zone")
        now = self.clock()
        if when - now > self.max_clock_skew:
            raise MessageRejected(f"{what} claims to be signed in the future ({signed_at})")
        if self.max_age is not None and now - when > self.max_age:
            raise MessageRejected(
                f"{what} was signed at {signed_at}, more than {self.max_age} ago: "
                "rejected as a possible replay"
            )
