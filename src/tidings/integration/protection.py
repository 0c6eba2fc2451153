"""Protected fields and crypto-shredding: sensitive values are encrypted per subject.

Mark a field sensitive and name the field that identifies whose data it is::

    @event(name="customers.CustomerRegistered", version=1)
    class CustomerRegistered:
        customer_id: str
        email: Annotated[str, Sensitive(subject="customer_id")]

(or ``field(metadata={"sensitive": Sensitive(subject="customer_id")})`` on a dataclass field).

:meth:`Protector.protect` returns a copy of the event whose sensitive values are replaced by
tokens ``tidings-enc:v1:<key id>:<base64url(nonce + AES-GCM ciphertext)>``, encrypted with the
subject's own key from a :class:`KeyStore`; the event type and field name are bound in as
associated data, so a token cannot be moved to another field. Tokens are strings, so sensitive
fields must be ``str`` (or ``str | None``) and the public schema stays valid.

Erasing a subject's key (:meth:`KeyStore.erase`) makes every copy of its data unreadable, in the
outbox, the event store and every broker: crypto-shredding. :meth:`Protector.reveal` puts the
plain values back where the key is known and :data:`REDACTED` where it is not (erased, or never
shared with this consumer): a clear marker, never a crash.

Key ids are random, not derived from the subject, so tokens do not reveal whose data they hold.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, TypeVar, get_args, get_origin, get_type_hints

from sqlalchemy import Column, Engine, LargeBinary, MetaData, String, Table, select
from sqlalchemy.exc import IntegrityError

from tidings.core.envelope import Envelope
from tidings.core.events import spec_of
from tidings.core.ids import random_bytes
from tidings.errors import ConfigurationError, ProtectionError

E = TypeVar("E")

TOKEN_PREFIX = "tidings-enc:v1:"
#: What a consumer sees in place of a value whose key it does not have.
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class Sensitive:
    """Field marker: encrypt this value with the key of the subject named by ``subject``."""

    subject: str


class KeyStore(Protocol):
    """Per-subject data keys."""

    def key_for(self, subject: str) -> tuple[str, bytes]:
        """The (key id, 32-byte key) of a subject, created on first use."""
        ...

    def key_by_id(self, key_id: str) -> bytes | None:
        """The key with this id, or None if it was erased or is unknown here."""
        ...

    def erase(self, subject: str) -> None:
        """Forget the subject's key for good (crypto-shredding)."""
        ...


class InMemoryKeyStore:
    """A :class:`KeyStore` in a dict (tests, single-process apps). Thread-safe."""

    def __init__(self) -> None:
        self._by_subject: dict[str, str] = {}
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def key_for(self, subject: str) -> tuple[str, bytes]:
        with self._lock:
            key_id = self._by_subject.get(subject)
            if key_id is None:
                key_id = uuid.uuid4().hex
                self._by_subject[subject] = key_id
                self._keys[key_id] = os.urandom(32)
            return key_id, self._keys[key_id]

    def key_by_id(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    def erase(self, subject: str) -> None:
        with self._lock:
            key_id = self._by_subject.pop(subject, None)
            if key_id is not None:
                self._keys.pop(key_id, None)

    def share(self, other: InMemoryKeyStore, subject: str) -> None:
        """Give another store (another service) the key of one subject."""
        key_id, key = self.key_for(subject)
        with other._lock:
            other._by_subject[subject] = key_id
            other._keys[key_id] = key


#: Tables of :class:`SqlKeyStore`; create them with ``key_metadata.create_all(engine)``.
key_metadata = MetaData()

subject_keys_table = Table(
    "tidings_subject_keys",
    key_metadata,
    Column("subject", String(200), primary_key=True),
    Column("key_id", String(32), nullable=False, unique=True),
    Column("data_key", LargeBinary(32), nullable=False),
)


class SqlKeyStore:
    """A :class:`KeyStore` in a database table (SQLite or PostgreSQL, through SQLAlchemy).

    ``erase`` deletes the row: once that commits, and backups holding it have expired, the
    subject's data is unreadable everywhere. Keep this table out of any place events are copied
    to (and its backups on a shorter retention than the event store's).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def key_for(self, subject: str) -> tuple[str, bytes]:
        table = subject_keys_table
        with self.engine.begin() as connection:
            row = connection.execute(
                select(table.c.key_id, table.c.data_key).where(table.c.subject == subject)
            ).first()
            if row is not None:
                return str(row.key_id), bytes(row.data_key)
            key_id, key = uuid.uuid4().hex, os.urandom(32)
            try:
                with connection.begin_nested():
                    connection.execute(
                        table.insert().values(subject=subject, key_id=key_id, data_key=key)
                    )
            except IntegrityError:
                # Another process created it first: use theirs.
                row = connection.execute(
                    select(table.c.key_id, table.c.data_key).where(table.c.subject == subject)
                ).one()
                return str(row.key_id), bytes(row.data_key)
            return key_id, key

    def key_by_id(self, key_id: str) -> bytes | None:
        table = subject_keys_table
        with self.engine.connect() as connection:
            key = connection.scalar(select(table.c.data_key).where(table.c.key_id == key_id))
        return bytes(key) if key is not None else None

    def erase(self, subject: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                subject_keys_table.delete().where(subject_keys_table.c.subject == subject)
            )


@dataclass(frozen=True, slots=True)
class _SensitiveField:
    name: str
    subject_field: str


def sensitive_fields(cls: type) -> tuple[_SensitiveField, ...]:
    """The sensitive fields of an event class (checked: string-typed, subject field exists)."""
    cached = _FIELDS_CACHE.get(cls)
    if cached is not None:
        return cached
    found: list[_SensitiveField] = []
    hints = get_type_hints(cls, include_extras=True)
    metadata_markers: dict[str, Sensitive] = {}
    if dataclasses.is_dataclass(cls):
        for item in dataclasses.fields(cls):
            marker = item.metadata.get("sensitive")
            if isinstance(marker, Sensitive):
                metadata_markers[item.name] = marker
    for name, hint in hints.items():
        marker = metadata_markers.get(name)
        if get_origin(hint) is Annotated:
            base, *extras = get_args(hint)
            marker = next((x for x in extras if isinstance(x, Sensitive)), marker)
            hint = base
        if marker is None:
            continue
        if hint is not str and set(get_args(hint)) != {str, type(None)}:
            raise ProtectionError(
                f"{cls.__qualname__}.{name}: only str (or str | None) fields can be Sensitive, "
                f"the encrypted token is a string"
            )
        if marker.subject not in hints:
            raise ProtectionError(
                f"{cls.__qualname__}.{name}: Sensitive(subject={marker.subject!r}) names a "
                "field that does not exist"
            )
        found.append(_SensitiveField(name, marker.subject))
    result = tuple(found)
    _FIELDS_CACHE[cls] = result
    return result


_FIELDS_CACHE: dict[type, tuple[_SensitiveField, ...]] = {}


class Protector:
    """Encrypts sensitive fields before events leave the process, and decrypts them on arrival."""

    def __init__(self, keys: KeyStore) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as missing:  # pragma: no cover - depends on the installed extras
            raise ConfigurationError(
                "protected fields need the cryptography package: pip install 'tidings[crypto]'"
            ) from missing
        self._aesgcm = AESGCM
        self.keys = keys

    def protect(self, event: E) -> E:
        fields = sensitive_fields(type(event))
        if not fields:
            return event
        type_name = spec_of(type(event)).name
        changes: dict[str, Any] = {}
        for item in fields:
            value = getattr(event, item.name)
            if value is None or (isinstance(value, str) and value.startswith(TOKEN_PREFIX)):
                continue
            subject = getattr(event, item.subject_field)
            if subject is None or subject == "":
                raise ProtectionError(
                    f"{type_name}.{item.name}: the subject field {item.subject_field!r} is empty"
                )
            key_id, key = self.keys.key_for(str(subject))
            nonce = random_bytes(12)  # os.urandom's, without a system call per field
            sealed = self._aesgcm(key).encrypt(
                nonce, value.encode("utf-8"), _associated(type_name, item.name)
            )
            token = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
            changes[item.name] = f"{TOKEN_PREFIX}{key_id}:{token}"
        return _replace(event, changes)

    def reveal(self, event: E) -> E:
        fields = sensitive_fields(type(event))
        if not fields:
            return event
        type_name = spec_of(type(event)).name
        changes: dict[str, Any] = {}
        for item in fields:
            value = getattr(event, item.name)
            if isinstance(value, str) and value.startswith(TOKEN_PREFIX):
                changes[item.name] = self._open(value, type_name, item.name)
        return _replace(event, changes) if changes else event

    def reveal_envelope(self, envelope: Envelope[E]) -> Envelope[E]:
        revealed = self.reveal(envelope.event)
        return (
            envelope
            if revealed is envelope.event
            else dataclasses.replace(envelope, event=revealed)
        )

    def _open(self, token: str, type_name: str, field_name: str) -> str:
        key_id, _, body = token[len(TOKEN_PREFIX) :].partition(":")
        key = self.keys.key_by_id(key_id)
        if key is None:
            return REDACTED
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain: bytes = self._aesgcm(key).decrypt(
                raw[:12], raw[12:], _associated(type_name, field_name)
            )
            return plain.decode("utf-8")
        except Exception:
            # Tampered or moved token: as unreadable as an erased one, and never a crash.
            return REDACTED


def _associated(type_name: str, field_name: str) -> bytes:
    return f"{type_name}\x00{field_name}".encode()


def _replace(event: E, changes: dict[str, Any]) -> E:
    if not changes:
        return event
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        return dataclasses.replace(event, **changes)
    copy = getattr(event, "model_copy", None)  # pydantic
    if copy is not None:
        return copy(update=changes)  # type: ignore[no-any-return]
    raise ProtectionError(f"cannot copy {type(event).__qualname__} to protect its fields")
