"""Writing the outbox: one row per committed event that something will handle after commit.

:class:`OutboxParticipant` joins a SQL unit of work as a commit participant. For every event in
the committed batch that has an after-commit subscriber (or that ``to_bus`` says is published),
it contributes one ``INSERT`` into the outbox, executed inside the unit of work's own
transaction: if the transaction rolls back, no row exists; if it commits, every row does.

Waking the relay without waiting for its next poll:

* PostgreSQL: relays ``LISTEN`` on the log's channel. Given the engine
  (:meth:`OutboxParticipant.for_engine`, :class:`LogNotifier`), the ``NOTIFY`` is sent *after*
  the commit, by a :class:`PostCommitNotifier` thread with a connection of its own, several
  commits folded into one notification. Not in the writing transaction: a notifying
  transaction takes a cluster-wide lock while it commits, which serializes concurrent writers,
  and costs them a round trip. A writer that dies between its commit and the notification only
  delays delivery until the relay's next poll; nothing is lost. Without an engine
  (``notify=True``), the transaction itself runs ``pg_notify`` (delivered on commit).
* Same process (any store): after a successful commit the unit of work calls
  :meth:`OutboxParticipant.after_commit`, which rings the :class:`Doorbell` a local relay waits on.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable

from tidings.core.codec import Codec, default_codec
from tidings.core.commit import CommitBatch
from tidings.core.dispatch import Handlers
from tidings.core.envelope import Envelope, system_clock
from tidings.errors import TidingsError
from tidings.outbox import tables
from tidings.persistence.bulk import bulk_insert
from tidings.persistence.direct import Direct
from tidings.persistence.sql import Params

logger = logging.getLogger("tidings.outbox")


class Doorbell:
    """A wake-up signal between writers and a relay in the same process (thread-safe)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def ring(self) -> None:
        self._event.set()

    def clear(self) -> None:
        """Forget rings so far: called just before a read of the log, which sees every row
        they announced (a ring comes after its commit)."""
        self._event.clear()

    def wait(self, timeout: float) -> bool:
        """Wait until rung or ``timeout`` seconds pass; True if rung (and then reset).

        Only a ring that woke the waiter is cleared: clearing after a timeout could swallow a
        ring that arrived in between, and the relay would sleep through a commit.
        """
        rung = self._event.wait(timeout)
        if rung:
            self._event.clear()
        return rung


#: A channel is an identifier: at most 63 bytes, ``tidings_`` included.
_CHANNEL_KEY_BYTES = 63 - len("tidings_")


def notify_channel(log: Table, schema: str | None = None) -> str:
    """The LISTEN/NOTIFY channel announcing new rows in ``log``: ``tidings_<schema>.<table>``.

    ``schema`` is the log's own (``log.schema``) or, for a log named without one, the schema
    its name resolves to through ``search_path``: writers and relays find it on the server
    (:func:`listen_channel`), so that services sharing a database, each with an outbox of the
    same name in a schema of its own, do not wake each other's relays. With neither (the
    table did not exist when asked), ``tidings_<table>``. A key too long for a channel is
    replaced by its MD5 (not for secrecy: PostgreSQL's ``md5()`` gives the same).
    """
    schema = log.schema or schema
    key = f"{schema}.{log.name}" if schema else log.name
    if len(key.encode()) > _CHANNEL_KEY_BYTES:
        key = hashlib.md5(key.encode(), usedforsecurity=False).hexdigest()
    return f"tidings_{key}"


def _channel_sql(quoted_name: str, name: str) -> str:
    """SQL computing :func:`notify_channel` for a log named without a schema, on the server,
    where ``search_path`` is known; ``quoted_name`` and ``name`` are the placeholders of the
    log's name, quoted and bare."""
    schema = (
        "(SELECT n.nspname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE c.oid = pg_catalog.to_regclass({quoted_name}))"
    )
    return (
        f"(SELECT CASE WHEN octet_length(k) <= {_CHANNEL_KEY_BYTES} THEN 'tidings_' || k"
        " ELSE 'tidings_' || md5(k) END"
        f" FROM (SELECT coalesce({schema} || '.', '') || {name} AS k) AS channel_key)"
    )


def quote_identifier(name: str) -> str:
    """``name`` as a quoted PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def listen_channel(connection: Any, log: Table) -> tuple[str, bool]:
    """The channel writers announce ``log``'s new rows on, as seen from ``connection`` (a
    psycopg connection), and whether the log was found there: until it exists, writers
    announce on ``tidings_<table>``, and once it does, on its schema's channel."""
    if log.schema is not None:
        return notify_channel(log), True
    row = connection.execute(
        f"SELECT {_channel_sql('%(q)s', '%(n)s')}, pg_catalog.to_regclass(%(q)s) IS NOT NULL",
        {"q": quote_identifier(log.name), "n": log.name},
    ).fetchone()
    return str(row[0]), bool(row[1])


class _LogName(NamedTuple):
    """A notification asked for by log name: its channel is resolved when it is sent."""

    name: str


class PostCommitNotifier:
    """Sends ``NOTIFY`` on PostgreSQL for writes that already committed, from a background
    thread on a connection of its own (see the module docstring for why).

    :meth:`notify` and :meth:`notify_log` only record the request and wake the thread, so a
    writer never waits for it; requests made while a notification is being sent go out
    together next. The connection is opened on first use, reopened after an error (the
    relay's polling covers a lost notification), and closed when idle. One notifier per
    engine.
    """

    _by_engine: weakref.WeakKeyDictionary[Engine, PostCommitNotifier] = weakref.WeakKeyDictionary()
    _registry_lock = threading.Lock()

    #: Seconds without a request after which the connection is closed and the thread ends.
    idle_seconds = 30.0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pending: set[str | _LogName] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_engine(cls, engine: Engine) -> PostCommitNotifier:
        with cls._registry_lock:
            found = cls._by_engine.get(engine)
            if found is None:
                found = cls._by_engine[engine] = cls(engine)
            return found

    def notify(self, channel: str) -> None:
        """Announce on ``channel``."""
        self._request(channel)

    def notify_log(self, log: Table) -> None:
        """Announce new rows in ``log`` on its :func:`notify_channel`."""
        self._request(_LogName(log.name) if log.schema is None else notify_channel(log))

    def _request(self, target: str | _LogName) -> None:
        with self._lock:
            self._pending.add(target)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tidings-notify", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def _take(self) -> set[str | _LogName]:
        with self._lock:
            channels, self._pending = self._pending, set()
            return channels

    def _connect(self) -> Any:
        pooled = self.engine.raw_connection()
        raw = pooled.driver_connection
        # Detached: this thread keeps it and closes it; it leaves the pool's count, so the
        # application's pool keeps all its connections.
        pooled.detach()
        try:
            raw.autocommit = True  # type: ignore[union-attr]
            # A notification is a hint (a lost one costs a poll), not data: its transaction
            # need not wait for the WAL flush, which would add a disk sync per commit notified.
            # Listeners get it at commit all the same.
            cursor = raw.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute("SET synchronous_commit TO off")
            finally:
                cursor.close()
        except BaseException:
            raw.close()  # type: ignore[union-attr]
            raise
        return raw

    def _run(self) -> None:
        raw: Any = None
        failing = False
        try:
            while True:
                if not self._wake.wait(self.idle_seconds):
                    with self._lock:
                        if not self._pending:
                            self._thread = None  # the next notify() starts a new one
                            return
                self._wake.clear()
                targets = self._take()
                if not targets:
                    continue
                try:
                    if raw is None:
                        raw = self._connect()
                    cursor = raw.cursor()
                    try:
                        # One statement, one round trip: in autocommit it is its own
                        # transaction, and the notifications go out when it ends.
                        cursor.execute(*_notify_all(targets))
                    finally:
                        cursor.close()
                    failing = False
                except Exception:
                    # Once per outage, not per commit: a writer must not drown in its logs.
                    if not failing:
                        logger.warning(
                            "NOTIFY after commit failed; relays poll until it works again",
                            exc_info=True,
                        )
                    failing = True
                    if raw is not None:
                        with contextlib.suppress(Exception):
                            raw.close()
                    raw = None
        finally:
            if raw is not None:
                with contextlib.suppress(Exception):
                    raw.close()


def _notify_all(targets: set[str | _LogName]) -> tuple[str, dict[str, str]]:
    """One ``SELECT pg_notify(...), ...`` for every target, and its parameters."""
    calls = []
    params = {}
    for n, target in enumerate(sorted(targets, key=lambda t: (type(t).__name__, t))):
        if isinstance(target, _LogName):
            calls.append(f"pg_notify({_channel_sql(f'%(q{n})s', f'%(n{n})s')}, '')")
            params[f"q{n}"], params[f"n{n}"] = quote_identifier(target.name), target.name
        else:
            calls.append(f"pg_notify(%(c{n})s, '')")
            params[f"c{n}"] = target
    return "SELECT " + ", ".join(calls), params


_inserts: weakref.WeakKeyDictionary[Table, Executable] = weakref.WeakKeyDictionary()


def _insert_into(table: Table) -> Executable:
    """One INSERT statement per table, shared by every participant: the direct shell caches
    its compiled form by statement, and participants are often made per unit of work."""
    found = _inserts.get(table)
    if found is None:
        # Several rows per commit go in as one COPY on PostgreSQL (see persistence.bulk).
        found = _inserts[table] = bulk_insert(insert(table))
    return found


def notify_statement(log: Table) -> Executable:
    """``pg_notify`` on ``log``'s channel: run it in the writing transaction, and PostgreSQL
    delivers the notification if, and when, that transaction commits."""
    if log.schema is not None:
        return select(func.pg_notify(notify_channel(log), ""))
    return text(f"SELECT pg_notify({_channel_sql(':quoted', ':name')}, '')").bindparams(
        quoted=quote_identifier(log.name), name=log.name
    )


class OutboxParticipant:
    """A :class:`~tidings.persistence.sql.CommitParticipant` that writes outbox rows."""

    def __init__(
        self,
        handlers: Handlers,
        *,
        table: Table = tables.outbox,
        codec: Codec | None = None,
        to_bus: Callable[[Envelope[Any]], bool] | None = None,
        notify: bool | PostCommitNotifier = False,
        doorbell: Doorbell | None = None,
    ) -> None:
        self.handlers = handlers
        self.table = table
        self.codec = codec or default_codec
        self.to_bus = to_bus
        #: True: NOTIFY inside the transaction; a notifier: NOTIFY after commit.
        self.notify = notify
        self.doorbell = doorbell
        self._insert = _insert_into(table)

    @classmethod
    def for_engine(cls, engine: Engine, handlers: Handlers, **kwargs: Any) -> OutboxParticipant:
        """A participant that sends NOTIFY after commit when ``engine`` is PostgreSQL."""
        if engine.dialect.name == "postgresql":
            kwargs.setdefault("notify", PostCommitNotifier.for_engine(engine))
        return cls(handlers, **kwargs)

    def wanted(self, envelope: Envelope[Any]) -> bool:
        if self.handlers.has_after_commit(type(envelope.event)):
            return True
        return self.to_bus is not None and self.to_bus(envelope)

    def statements(self, batch: CommitBatch) -> Iterable[tuple[Executable | Direct, Params]]:
        # Any log table may be written (tests, or a log of your own); only the outbox keeps
        # ``recorded_at`` for retention.
        recorded_at = system_clock() if "recorded_at" in self.table.c else None
        rows = []
        for envelope in batch.envelopes:
            if self.wanted(envelope):
                row = tables.row_from_envelope(envelope, self.codec)
                if recorded_at is not None:
                    row["recorded_at"] = recorded_at
                rows.append(row)
        if not rows:
            return []
        # Every column is given (none relies on a Python-side default): the driver's cursor
        # can run it.
        statements: list[tuple[Executable | Direct, Params]] = [(Direct(self._insert), rows)]
        if self.notify is True:
            statements.append((notify_statement(self.table), None))
        return statements

    def translate(self, error: DBAPIError) -> TidingsError | None:
        return None

    def after_commit(self, batch: CommitBatch) -> None:
        if not any(self.wanted(envelope) for envelope in batch.envelopes):
            # Wrote no row (a relay's own checkpoint move, say): nothing to announce. A ring
            # here woke the relay that had just committed into reading an empty page.
            return
        if self.doorbell is not None:
            self.doorbell.ring()
        if isinstance(self.notify, PostCommitNotifier):
            self.notify.notify_log(self.table)


class LogNotifier:
    """Wakes relays that follow a log written by *another* participant (an event store's events
    table that serves as the outbox): it writes nothing itself, but joins the unit of work to
    ``NOTIFY`` on PostgreSQL (delivered on commit) and to ring an in-process doorbell after
    commit, as :class:`OutboxParticipant` does for the outbox.
    """

    def __init__(self, engine: Engine, log: Table, doorbell: Doorbell | None = None) -> None:
        self.notifier = (
            PostCommitNotifier.for_engine(engine) if engine.dialect.name == "postgresql" else None
        )
        self.log = log
        self.doorbell = doorbell

    def statements(self, batch: CommitBatch) -> Iterable[tuple[Executable, Params]]:
        return []

    def translate(self, error: DBAPIError) -> TidingsError | None:
        return None

    def after_commit(self, batch: CommitBatch) -> None:
        if batch.envelopes:
            if self.doorbell is not None:
                self.doorbell.ring()
            if self.notifier is not None:
                self.notifier.notify_log(self.log)
