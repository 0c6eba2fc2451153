"""Time-ordered identifiers (UUIDv7, RFC 9562).

Python gained ``uuid.uuid7`` only in 3.14; this is a small, dependency-free generator. Ids made in
one process are strictly increasing: within one millisecond a 12-bit counter (``rand_a``) orders
them, and if it overflows the timestamp is advanced by one millisecond rather than going back.

The random bits come from ``os.urandom`` in blocks of 4 KiB (512 ids), not 8 bytes per id: each
``os.urandom`` call releases the GIL for its system call, and in a process whose other threads
are busy (a relay, a consumer, the application) getting it back can take up to the interpreter's
switch interval (5 ms). Measured: a writer committing 100 events per transaction beside a relay
and a broker consumer in the same process took 33 ms per commit with a call per id, 25 ms with
blocks. A forked child starts with an empty block (and a fresh lock) of its own, so parent and
child never hand out the same bits.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from uuid import UUID, SafeUUID

import msgspec

_lock = threading.Lock()
_last_ms = 0
_counter = 0

_BLOCK = 4096
_random_block = b""
_random_used = 0


def _after_fork_in_child() -> None:
    # The parent's block must not be handed out again here; and the lock, if another of the
    # parent's threads held it at the fork, would never be released in the child.
    global _random_block, _random_used, _lock
    _random_block, _random_used = b"", 0
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def random_bytes(count: int) -> bytes:
    """``count`` bytes from the operating system's CSPRNG, served from a shared block.

    Safe for nonces and unguessable ids (the bytes are ``os.urandom``'s, each handed out once),
    and cheaper than ``os.urandom`` per call when called once per event (see the module doc).
    """
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    if count > _BLOCK // 8:
        return os.urandom(count)
    with _lock:
        return _take(count)


def _take(count: int) -> bytes:
    """The next ``count`` bytes of the block (a new block when it runs out); hold ``_lock``."""
    global _random_block, _random_used
    start = _random_used
    if start + count > len(_random_block):
        _random_block, start = os.urandom(_BLOCK), 0
    _random_used = start + count
    return _random_block[start : start + count]


_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0x2 << 62


def uuid7() -> UUID:
    """Return a new UUIDv7, strictly greater than any earlier one from this process."""
    global _last_ms, _counter
    now_ms = time.time_ns() // 1_000_000
    with _lock:  # once per id: the random bits and the counter under the same lock
        tail = int.from_bytes(_take(8), "big") & ((1 << 62) - 1)
        if now_ms > _last_ms:
            _last_ms = now_ms
            # Start the counter at a random point in its lower half so ids stay hard to guess
            # while leaving room for many ids within the same millisecond.
            _counter = tail >> 51
        else:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    value = (ms & ((1 << 48) - 1)) << 80 | _VERSION_7 | counter << 64 | _VARIANT_RFC | tail
    return uuid_from_int(value)


_new = object.__new__
_set = object.__setattr__
_UNKNOWN = SafeUUID.unknown


def uuid_from_int(value: int) -> UUID:
    """``UUID(int=value)`` for a ``value`` known to be a 128-bit unsigned integer.

    The same object ``UUID.__init__`` makes (its two slots, ``is_safe`` unknown) without its
    argument handling, which costs about 0.9 microseconds per call: a few such ids are made for
    every event written or forwarded.
    """
    uuid = _new(UUID)
    _set(uuid, "int", value)
    _set(uuid, "is_safe", _UNKNOWN)
    return uuid


#: ``str(uuid)``'s text, written by msgspec in C: about 0.2 microseconds instead of 0.75-1.5
#: for ``UUID.__str__`` in Python, which ran several times for every event a relay forwards and
#: every message a consumer handles.
uuid_text: Callable[[UUID], str] = msgspec.to_builtins


def parse_uuid(text: str) -> UUID:
    """The UUID written as ``text``: 32 hexadecimal digits, grouped 8-4-4-4-12 by hyphens or not.

    Stricter than ``UUID(text)``, which also takes braces and a ``urn:uuid:`` prefix and, since
    it hands the digits to ``int()``, reads a leading space or an underscore between digits as
    part of a number (``UUID(" 2345678-...")`` is ``02345678-...``); and about three times as fast.
    Raises ``ValueError`` for anything else.
    """
    if type(text) is not str:  # convert() would also take bytes and UUIDs
        raise ValueError(f"a UUID must be given as text, not {type(text).__name__}")
    try:
        uuid: UUID = msgspec.convert(text, UUID)
    except msgspec.ValidationError:
        raise ValueError(f"not a UUID: {text[:80]!r}") from None
    return uuid


def uuid7_time_ms(value: UUID) -> int:
    """The Unix time in milliseconds embedded in a UUIDv7."""
    return value.int >> 80


# The version (5) and variant (RFC) bits of a name-based UUID, as in RFC 9562 section 5.5.
_NAME_CLEAR = ~((0xF << 76) | (0x3 << 62))
_NAME_SET = (0x5 << 76) | _VARIANT_RFC


#: Namespaces' bytes by value (``UUID.bytes`` builds them anew at each call); a few at most.
_namespace_bytes: dict[int, bytes] = {}


def name_uuid(namespace: UUID, name: str) -> UUID:
    """The same value as ``uuid.uuid5(namespace, name)``, in about a third of the time.

    A relay derives one of these for every event it translates, and the standard library's
    version spends most of its time on argument handling rather than on the SHA-1.
    """
    prefix = _namespace_bytes.get(namespace.int)
    if prefix is None:
        prefix = namespace.bytes
        if len(_namespace_bytes) < 64:
            _namespace_bytes[namespace.int] = prefix
    digest = hashlib.sha1(prefix + name.encode("utf-8"), usedforsecurity=False).digest()
    return uuid_from_int(int.from_bytes(digest[:16], "big") & _NAME_CLEAR | _NAME_SET)
