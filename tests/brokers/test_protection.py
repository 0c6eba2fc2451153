"""Protected fields: encrypted before leaving the process, unreadable once the key is erased."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Annotated

import pytest

from tidings import event
from tidings.core.codec import default_codec
from tidings.errors import ProtectionError
from tidings.integration.protection import (
    REDACTED,
    TOKEN_PREFIX,
    InMemoryKeyStore,
    Protector,
    Sensitive,
    SqlKeyStore,
    key_metadata,
)
from tidings.persistence.sqlite import sqlite_engine


@event(name="test.protection.CustomerRegistered", version=1)
class CustomerRegistered:
    customer_id: str
    email: Annotated[str, Sensitive(subject="customer_id")]
    nickname: str | None = field(default=None, metadata={"sensitive": Sensitive("customer_id")})
    country: str = "NL"


def test_sensitive_fields_are_encrypted_and_round_trip_through_the_codec() -> None:
    keys = InMemoryKeyStore()
    protector = Protector(keys)
    original = CustomerRegistered("c-1", "ada@example.com", "ada")
    protected = protector.protect(original)
    assert protected.email.startswith(TOKEN_PREFIX)
    assert protected.nickname is not None and protected.nickname.startswith(TOKEN_PREFIX)
    assert protected.country == "NL" and protected.customer_id == "c-1"
    payload = default_codec.encode_payload(protected)
    assert b"ada@example.com" not in payload
    decoded = default_codec.decode("test.protection.CustomerRegistered", 1, payload)
    assert protector.reveal(decoded) == original


def test_erasing_the_subject_key_shreds_only_that_subject() -> None:
    keys = InMemoryKeyStore()
    protector = Protector(keys)
    ada = protector.protect(CustomerRegistered("c-1", "ada@example.com"))
    bob = protector.protect(CustomerRegistered("c-2", "bob@example.com"))
    keys.erase("c-1")
    shredded = protector.reveal(ada)
    assert shredded.email == REDACTED
    assert shredded.customer_id == "c-1"
    assert protector.reveal(bob).email == "bob@example.com"
    # New data for the erased subject gets a new key; the old data stays unreadable.
    again = protector.protect(CustomerRegistered("c-1", "ada@new.example"))
    assert protector.reveal(again).email == "ada@new.example"
    assert protector.reveal(ada).email == REDACTED


def test_a_consumer_without_the_key_sees_the_marker_not_a_crash() -> None:
    producer_keys, consumer_keys = InMemoryKeyStore(), InMemoryKeyStore()
    protected = Protector(producer_keys).protect(CustomerRegistered("c-1", "ada@example.com"))
    assert Protector(consumer_keys).reveal(protected).email == REDACTED
    producer_keys.share(consumer_keys, "c-1")
    assert Protector(consumer_keys).reveal(protected).email == "ada@example.com"


def test_tokens_cannot_be_moved_between_fields_or_tampered_with() -> None:
    keys = InMemoryKeyStore()
    protector = Protector(keys)
    protected = protector.protect(CustomerRegistered("c-1", "ada@example.com", "ada"))
    swapped = CustomerRegistered("c-1", protected.nickname or "", protected.email)
    assert protector.reveal(swapped).email == REDACTED
    broken = CustomerRegistered("c-1", protected.email[:-4] + "AAAA")
    assert protector.reveal(broken).email == REDACTED


def test_protecting_twice_does_not_double_encrypt() -> None:
    protector = Protector(InMemoryKeyStore())
    once = protector.protect(CustomerRegistered("c-1", "ada@example.com"))
    assert protector.protect(once) == once


def test_only_string_fields_with_an_existing_subject_can_be_sensitive() -> None:
    @event(name="test.protection.BadType")
    class BadType:
        customer_id: str
        age: Annotated[int, Sensitive(subject="customer_id")]

    @event(name="test.protection.BadSubject")
    class BadSubject:
        email: Annotated[str, Sensitive(subject="who")]

    protector = Protector(InMemoryKeyStore())
    with pytest.raises(ProtectionError, match="only str"):
        protector.protect(BadType("c", 3))
    with pytest.raises(ProtectionError, match="does not exist"):
        protector.protect(BadSubject("x"))


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_sql_key_store_shreds_for_every_process_sharing_it(
    database: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if database == "sqlite":
        engine = sqlite_engine(tmp_path / "keys.sqlite")
    else:
        engine = request.getfixturevalue("pg_engine")
    key_metadata.create_all(engine)
    writer, reader = Protector(SqlKeyStore(engine)), Protector(SqlKeyStore(engine))
    protected = writer.protect(CustomerRegistered("c-1", "ada@example.com"))
    assert SqlKeyStore(engine).key_for("c-1") == SqlKeyStore(engine).key_for("c-1")
    assert reader.reveal(protected).email == "ada@example.com"
    SqlKeyStore(engine).erase("c-1")
    assert reader.reveal(protected).email == REDACTED
    if database == "sqlite":
        engine.dispose()
