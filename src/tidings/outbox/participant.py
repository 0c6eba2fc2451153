"""Writing the outbox: one row per committed event that something will handle after commit.

:class:`OutboxParticipant` joins a SQL unit of work as a commit participant. For every event in
the committed batch that has an after-commit subscriber (or that ``to_bus`` says is published),
it contributes one ``INSERT`` into the outbox, executed inside the unit of work's own
transaction: if the transaction rolls back, no row exists; if it commits, every row does.

Waking the relay without waiting for its next poll:

* PostgreSQL: the same transaction runs ``pg_notify(channel)``; PostgreSQL delivers the
  notification only if, and when, the transaction commits. Relays ``LISTEN`` on the channel.
  (Notifying transactions take a short cluster-wide lock while they commit; an application
  committing thousands of transactions per second may prefer ``notify=False`` and polling.)
* Same process (any store): after a successful commit the unit of work calls
  :meth:`OutboxParticipant.after_commit`, which rings the :class:`Doorbell` a local relay waits on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Table, func, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable

from tidings.core.codec import Codec, default_codec
from tidings.core.commit import CommitBatch
from tidings.core.dispatch import Handlers
from tidings.core.envelope import Envelope, system_clock
from tidings.core.messages import to_stored
from tidings.errors import TidingsError
from tidings.outbox import tables
from tidings.persistence.sql import Params


class Doorbell:
    """A wake-up signal between writers and a relay in the same process (thread-safe)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def ring(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Wait until rung or ``timeout`` seconds pass; True if rung (and then reset).

        Only a ring that woke the waiter is cleared: clearing after a timeout could swallow a
        ring that arrived in between, and the relay would sleep through a commit.
        """
        rung = self._event.wait(timeout)
        if rung:
            self._event.clear()
        return rung


def notify_channel(log: Table) -> str:
    """The LISTEN/NOTIFY channel announcing new rows in ``log``."""
    return f"tidings_{log.name}"[:63]


def notify_statement(log: Table) -> Executable:
    """``pg_notify`` on ``log``'s channel: run it in the writing transaction, and PostgreSQL
    delivers the notification if, and when, that transaction commits."""
    return select(func.pg_notify(notify_channel(log), ""))


class OutboxParticipant:
    """A :class:`~tidings.persistence.sql.CommitParticipant` that writes outbox rows."""

    def __init__(
        self,
        handlers: Handlers,
        *,
        table: Table = tables.outbox,
        codec: Codec | None = None,
        to_bus: Callable[[Envelope[Any]], bool] | None = None,
        notify: bool = False,
        doorbell: Doorbell | None = None,
    ) -> None:
        self.handlers = handlers
        self.table = table
        self.codec = codec or default_codec
        self.to_bus = to_bus
        self.notify = notify
        self.doorbell = doorbell

    @classmethod
    def for_engine(cls, engine: Engine, handlers: Handlers, **kwargs: Any) -> OutboxParticipant:
        """A participant that uses NOTIFY when ``engine`` is PostgreSQL."""
        kwargs.setdefault("notify", engine.dialect.name == "postgresql")
        return cls(handlers, **kwargs)

    def wanted(self, envelope: Envelope[Any]) -> bool:
        if self.handlers.has_after_commit(type(envelope.event)):
            return True
        return self.to_bus is not None and self.to_bus(envelope)

    def statements(self, batch: CommitBatch) -> Iterable[tuple[Executable, Params]]:
        # Any log table may be written (tests, or a log of your own); only the outbox keeps
        # ``recorded_at`` for retention.
        recorded_at = system_clock() if "recorded_at" in self.table.c else None
        rows = []
        for envelope in batch.envelopes:
            if self.wanted(envelope):
                row = tables.row_from_stored(to_stored(envelope, self.codec))
                if recorded_at is not None:
                    row["recorded_at"] = recorded_at
                rows.append(row)
        if not rows:
            return []
        statements: list[tuple[Executable, Params]] = [(insert(self.table), rows)]
        if self.notify:
            statements.append((notify_statement(self.table), None))
        return statements

    def translate(self, error: DBAPIError) -> TidingsError | None:
        return None

    def after_commit(self, batch: CommitBatch) -> None:
        if self.doorbell is not None:
            self.doorbell.ring()


class LogNotifier:
    """Wakes relays that follow a log written by *another* participant (an event store's events
    table that serves as the outbox): it writes nothing itself, but joins the unit of work to
    ``NOTIFY`` on PostgreSQL (delivered on commit) and to ring an in-process doorbell after
    commit, as :class:`OutboxParticipant` does for the outbox.
    """

    def __init__(self, engine: Engine, log: Table, doorbell: Doorbell | None = None) -> None:
        self.notify = engine.dialect.name == "postgresql"
        self.log = log
        self.doorbell = doorbell

    def statements(self, batch: CommitBatch) -> Iterable[tuple[Executable, Params]]:
        if self.notify and batch.envelopes:
            return [(notify_statement(self.log), None)]
        return []

    def translate(self, error: DBAPIError) -> TidingsError | None:
        return None

    def after_commit(self, batch: CommitBatch) -> None:
        if self.doorbell is not None and batch.envelopes:
            self.doorbell.ring()
