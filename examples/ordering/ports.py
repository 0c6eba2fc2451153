"""The outside world the application talks to, as small ports with in-process fakes.

Both fakes honour idempotency keys the way real providers do: a request repeated with the same
key is answered from memory and has no second effect. tidings hands every after-commit handler
a ``delivery_id`` that is stable across redeliveries, so passing it as the key makes a retried
delivery harmless.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from decimal import Decimal


class ServiceDown(Exception):
    """The external service cannot be reached right now; try again later."""


@dataclass
class PaymentGateway:
    """Authorizes card payments. Declines the buyers listed in ``declined_buyers``."""

    declined_buyers: set[str] = field(default_factory=set)
    charges: dict[str, tuple[str, Decimal, bool]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def authorize(self, buyer_id: str, amount: Decimal, *, idempotency_key: str) -> bool:
        with self._lock:
            if idempotency_key not in self.charges:
                approved = buyer_id not in self.declined_buyers
                self.charges[idempotency_key] = (buyer_id, amount, approved)
            return self.charges[idempotency_key][2]


@dataclass
class Notifier:
    """Sends messages to customers. ``down`` (or the existence of the file ``down_flag``, which
    another process can create and remove) simulates an outage."""

    down: bool = False
    down_flag: str | None = None
    sent: dict[str, tuple[str, str]] = field(default_factory=dict)
    attempts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, buyer_id: str, subject: str, *, idempotency_key: str) -> None:
        with self._lock:
            self.attempts += 1
            if self.down or (self.down_flag is not None and os.path.exists(self.down_flag)):
                raise ServiceDown("the notification service is unreachable")
            self.sent.setdefault(idempotency_key, (buyer_id, subject))

    def messages_to(self, buyer_id: str) -> list[str]:
        with self._lock:
            return [subject for who, subject in self.sent.values() if who == buyer_id]


@dataclass(frozen=True)
class Carrier:
    name: str = "tidings-express"
