"""Time-ordered identifiers (UUIDv7, RFC 9562).

Python gained ``uuid.uuid7`` only in 3.14; this is a small, dependency-free generator. Ids made in
one process are strictly increasing: within one millisecond a 12-bit counter (``rand_a``) orders
them, and if it overflows the timestamp is advanced by one millisecond rather than going back.
"""

from __future__ import annotations

import os
import threading
import time
from uuid import UUID

_lock = threading.Lock()
_last_ms = 0
_counter = 0

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0x2 << 62


def uuid7() -> UUID:
    """Return a new UUIDv7, strictly greater than any earlier one from this process."""
    global _last_ms, _counter
    now_ms = time.time_ns() // 1_000_000
    tail = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    with _lock:
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
    return UUID(int=value)


def uuid7_time_ms(value: UUID) -> int:
    """The Unix time in milliseconds embedded in a UUIDv7."""
    return value.int >> 80
