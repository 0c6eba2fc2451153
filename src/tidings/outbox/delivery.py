"""Delivering a log to one subscriber partition, effectively once.

The :class:`Follower` reads committed rows after a (subscriber, partition) checkpoint, gap-safe
(:func:`tidings.persistence.log.read_after`), and runs the subscriber's handlers for the rows of
its partition inside a unit of work. In that same transaction it moves the checkpoint with a
compare-and-set (``UPDATE ... WHERE tx = :old_tx AND position = :old_position``). So:

* a crash before the commit loses the effects *and* the checkpoint move: the rows are delivered
  again and applied once;
* two relays that both believe they hold a partition (an expired lease, a paused process) cannot
  both commit: the second compare-and-set matches no row and its transaction rolls back.

Rows are handled in batches (one transaction per batch). When a handler raises, the batch is
rolled back, the rows before the failing one are committed again as a shorter batch, and the
failing one is retried alone under the subscriber's :class:`~tidings.outbox.retry.RetryPolicy`.

A subscriber whose only handler is a :class:`~tidings.outbox.subscribers.BatchHandler` (the bus
forwarder) gets the batch's events in one ``handle_batch`` call; when that call (or its commit)
fails, the same batch is delivered again event by event, and the rules above apply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, and_, bindparam, insert, select, update
from sqlalchemy.orm import Session

from tidings.core.envelope import Envelope, system_clock
from tidings.core.messages import METADATA_FIELDS, decode_envelope
from tidings.errors import CodecError, ConfigurationError, StoreError
from tidings.outbox import tables
from tidings.outbox.config import RelayConfig
from tidings.outbox.retry import OnFailure
from tidings.outbox.subscribers import (
    Failure,
    Invoker,
    Item,
    Subscriber,
    _partition,
    dead_letter_values,
    reader_engine,
)
from tidings.persistence.direct import update_direct
from tidings.persistence.log import Checkpoint, after, committed_after_bound, log_order
from tidings.persistence.values import as_uuid

logger = logging.getLogger("tidings.outbox")


_EVENT_COLUMNS = (*METADATA_FIELDS, "headers", "payload")
_READ_COLUMNS = ("position", "tx", *_EVENT_COLUMNS)
# Where each column sits in a row read by Follower._read.
_POSITION, _TX, _EVENT_ID, _TYPE, _VERSION, _STREAM_ID, _STREAM_VERSION = range(7)
_OCCURRED_AT, _CORRELATION_ID, _CAUSATION_ID, _PRODUCER, _HEADERS, _PAYLOAD = range(7, 13)
assert _READ_COLUMNS[_OCCURRED_AT] == "occurred_at" and _READ_COLUMNS[_PAYLOAD] == "payload"


class LostPartition(StoreError):
    """Another relay moved this partition's checkpoint first; our transaction rolled back."""


@dataclass
class PendingRetry:
    """A message waiting for a delayed retry (its partition waits with it)."""

    event_id: Any
    next_attempt: int
    due: float
    first_failure: datetime
    failures: list[Failure] = field(default_factory=list)


@dataclass
class _Page:
    """Rows read after a checkpoint and the ones a (subscriber, partition) handles, decoded."""

    rows: Sequence[Row[Any]]
    #: (index in ``rows``, item) for the rows of the partition of types the subscriber handles.
    work: list[tuple[int, Item]]


class _HandlerFailed(Exception):
    def __init__(self, index: int | None, cause: BaseException, *, batched: bool = False) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause
        #: The failure happened in a batch handler's call or in its transaction's commit.
        self.batched = batched


class Follower:
    """Delivers ``config.log`` to subscribers, one (subscriber, partition) at a time."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.clock = clock
        self.dialect = config.engine.dialect.name
        self.reader = reader_engine(config.engine)
        # Only what delivery needs: a log may carry more (recorded_at, previous_version...),
        # and every column read is a value converted per row.
        log = config.log
        self._columns = [log.c[name] for name in _READ_COLUMNS]
        # Built once, the checkpoint bound per read (as the event store's prebuilt reads): a
        # statement built per poll costs its construction and its cache key each time, which
        # on a relay woken per commit is a good part of the wake-to-handler time.
        self._read_statement = (
            select(*self._columns)
            .where(committed_after_bound(log, self.dialect))
            .order_by(*log_order(log, self.dialect))
            .limit(config.batch_size)
        )
        cp = tables.checkpoints
        self._advance_statement = (
            update(cp)
            .where(
                and_(
                    cp.c.log == log.name,
                    cp.c.subscriber == bindparam("cp_subscriber"),
                    cp.c.partition == bindparam("cp_partition"),
                    cp.c.tx == bindparam("from_tx"),
                    cp.c.position == bindparam("from_position"),
                )
            )
            .values(
                tx=bindparam("to_tx", type_=cp.c.tx.type),
                position=bindparam("to_position", type_=cp.c.position.type),
                updated_at=bindparam("cp_updated_at", type_=cp.c.updated_at.type),
            )
        )
        self.invoke = Invoker()
        self.pending: dict[tuple[str, int], PendingRetry] = {}
        #: Partitions whose stored retry was looked up / that have a stored retry row.
        self._retries_loaded: set[tuple[str, int]] = set()
        self._stored_retries: set[tuple[str, int]] = set()
        #: Checkpoints as last committed by this follower: while it holds a partition, only it
        #: moves the checkpoint (the compare-and-set catches the exceptions), so the database
        #: need not be asked before every read.
        self.positions: dict[tuple[str, int], Checkpoint] = {}
        self._type_interest: dict[tuple[str, str], bool] = {}
        #: Subscribers that may have parked streams (PARK policy, or parkings found at start);
        #: for the others the per-batch parking lookup is skipped. Only the partition's owner
        #: ever parks a stream, so a subscriber that cannot park has none.
        self.may_park: dict[str, bool] = {}
        # An in-memory SQLite database is one connection, which no other thread may use.
        self._reads_ahead = config.read_ahead and (
            self.dialect != "sqlite" or self.reader is not config.engine
        )
        self._ahead_pool: ThreadPoolExecutor | None = None
        #: Per (subscriber, partition): the page after the one being handled, being read (and
        #: the checkpoint it is read after).
        self._ahead: dict[tuple[str, int], tuple[Checkpoint, Future[_Page]]] = {}
        #: Rows of the page :meth:`process` last read (0: it read none).
        self._page_rows = 0
        #: Set by :meth:`process` when a partition may have rows due beyond what it moved past
        #: (its page was full, or handled only in part); the relay clears it before each step.
        self.more_waiting = False

    # -- reading -----------------------------------------------------------------------------

    def checkpoint(self, subscriber: str, partition: int) -> Checkpoint:
        cp = tables.checkpoints
        with self.reader.connect() as conn:
            row = conn.execute(
                select(cp.c.tx, cp.c.position).where(
                    cp.c.log == self.config.log.name,
                    cp.c.subscriber == subscriber,
                    cp.c.partition == partition,
                )
            ).one_or_none()
        if row is None:
            raise ConfigurationError(
                f"no checkpoint for subscriber {subscriber!r} partition {partition}: "
                "call ensure_checkpoints() first (the relay does)"
            )
        return Checkpoint(int(row.tx), int(row.position))

    def has_committed_backlog(self, subscriber: str, partition: int) -> bool:
        """Whether committed rows lie after the checkpoint, fence or not."""
        start = self.positions.get((subscriber, partition)) or self.checkpoint(
            subscriber, partition
        )
        log = self.config.log
        with self.reader.connect() as conn:
            found = conn.execute(select(log.c.position).where(after(log, start)).limit(1))
            return found.first() is not None

    def _read(self, start: Checkpoint) -> Sequence[Row[Any]]:
        with self.reader.connect() as conn:
            # Plain rows, read by position (the order of ``_columns``): a mapping per row costs
            # a lookup per column per event.
            return conn.execute(
                self._read_statement, {"after_tx": start.tx, "after_position": start.position}
            ).all()

    def _page(self, subscriber: Subscriber, partition: int, start: Checkpoint) -> _Page:
        rows = self._read(start)
        work: list[tuple[int, Item]] = []
        partitions = self.config.partitions
        for index, row in enumerate(rows):
            # Partition and interest are decided on the raw columns: rows for other partitions
            # or of types this subscriber ignores are never decoded.
            if partitions > 1 and _partition(row[_STREAM_ID], row[_EVENT_ID], partitions) != (
                partition
            ):
                continue
            if not self._wants_type(subscriber, row[_TYPE]):
                continue
            # Wanted by type name means wanted: a decoded event is of its name's class (and an
            # undecodable row is dead-lettered), so no second lookup by class.
            work.append((index, self._item(row)))
        return _Page(rows, work)

    def _read_ahead(self, subscriber: Subscriber, partition: int, start: Checkpoint) -> None:
        """Start reading the page after ``start`` while the current one is handled."""
        if self._ahead_pool is None:
            self._ahead_pool = ThreadPoolExecutor(1, thread_name_prefix="tidings-read-ahead")
        future = self._ahead_pool.submit(self._page, subscriber, partition, start)
        self._ahead[(subscriber.name, partition)] = (start, future)

    def _page_read_ahead(self, key: tuple[str, int], start: Checkpoint) -> _Page | None:
        """The page read ahead for ``key``, if it starts at ``start`` and is worth using."""
        ahead = self._ahead.pop(key, None)
        if ahead is None:
            return None
        after, future = ahead
        if after != start:
            # Read after a checkpoint that did not commit (the page before it failed, or a
            # message of it waits for a delayed retry): not the rows due now.
            future.cancel()
            return None
        try:
            page = future.result()
        except Exception:
            # Read again inline: the failure (an outage...) is reported from there if it lasts.
            return None
        # Found nothing: rows may have committed since, and an empty page now would let the
        # relay sleep until the next poll instead of reading them.
        return page if page.rows else None

    def _item(self, row: Row[Any]) -> Item:
        """Decode one row straight into an envelope (the StoredEvent is built only if needed)."""
        checkpoint = Checkpoint(int(row[_TX]), int(row[_POSITION]))
        codec = self.config.codec
        try:
            event_type = str(row[_TYPE])
            version = int(row[_VERSION])
            event_id = as_uuid(row[_EVENT_ID])
            occurred_at = tables.as_utc(row[_OCCURRED_AT])
            correlation_id = as_uuid(row[_CORRELATION_ID])
            causation = row[_CAUSATION_ID]
            causation_id = as_uuid(causation) if causation is not None else None
            headers = tables.headers_of(row[_HEADERS])
            if occurred_at is None:
                raise TypeError("occurred_at is missing")
        except (ValueError, TypeError) as exc:
            # The metadata itself is broken: nothing can be dead-lettered faithfully.
            raise StoreError(
                f"row {checkpoint} of {self.config.log.name!r} has unreadable metadata: {exc}"
            ) from exc
        try:
            envelope = decode_envelope(
                codec,
                event_id,
                event_type,
                version,
                row[_STREAM_ID],
                row[_STREAM_VERSION],
                occurred_at,
                correlation_id,
                causation_id,
                row[_PRODUCER],
                row[_PAYLOAD],
                headers,
            )
        except CodecError as exc:
            return Item(checkpoint, row, None, exc)
        return Item(checkpoint, row, envelope, None)

    def _wants_type(self, subscriber: Subscriber, type_name: str) -> bool:
        """Whether ``subscriber`` handles the stored type (unknown types: yes, to dead-letter)."""
        key = (subscriber.name, type_name)
        wanted = self._type_interest.get(key)
        if wanted is None:
            if type_name not in self.config.codec.registry:
                return True  # not cached: the type may be registered later (a deploy)
            cls = self.config.codec.registry.spec(type_name).cls
            wanted = self._type_interest[key] = bool(subscriber.handlers_for(cls))
        return wanted

    # -- one step ----------------------------------------------------------------------------

    def process(self, subscriber: Subscriber, partition: int) -> int:
        """Deliver what is due in one partition; returns how many rows it moved past."""
        self._page_rows = 0
        try:
            moved = self._process(subscriber, partition)
        except BaseException:
            # Whatever happened, the committed checkpoint is the truth: read it next time.
            self.positions.pop((subscriber.name, partition), None)
            self._ahead.pop((subscriber.name, partition), None)
            raise
        if self._page_rows == self.config.batch_size or moved < self._page_rows:
            # A full page (more rows may follow it) or one left part done: not caught up.
            self.more_waiting = True
        return moved

    def forget_positions(self) -> None:
        """Re-read checkpoints and delayed retries from the database (after lease changes)."""
        self.positions.clear()
        self._ahead.clear()
        self.pending.clear()
        self._retries_loaded.clear()

    # -- delayed retries, kept in the database ------------------------------------------------

    def _pending_retry(self, key: tuple[str, int]) -> PendingRetry | None:
        """The delayed retry of a partition: in memory, or as stored by an earlier relay."""
        retry = self.pending.get(key)
        if retry is None and key not in self._retries_loaded:
            self._retries_loaded.add(key)
            retry = self._load_retry(key)
            if retry is not None:
                self.pending[key] = retry
        return retry

    def _retry_row(self, key: tuple[str, int]) -> ColumnElement[bool]:
        pr = tables.pending_retries
        subscriber, partition = key
        return and_(
            pr.c.log == self.config.log.name,
            pr.c.subscriber == subscriber,
            pr.c.partition == partition,
        )

    def _load_retry(self, key: tuple[str, int]) -> PendingRetry | None:
        pr = tables.pending_retries
        with self.reader.connect() as conn:
            row = conn.execute(select(pr).where(self._retry_row(key))).first()
        if row is None:
            return None
        self._stored_retries.add(key)
        try:
            failures = [
                Failure(
                    exception_type=str(f["exception_type"]),
                    message=str(f["message"]),
                    traceback=str(f["traceback"]),
                    at=datetime.fromisoformat(str(f["at"])),
                )
                for f in json.loads(row.failures)
            ]
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("unreadable stored retry for %s (%s): starting it over", key, exc)
            failures = []
        return PendingRetry(
            event_id=as_uuid(row.event_id),
            next_attempt=int(row.next_attempt),
            due=float(row.due_at),
            first_failure=tables.as_utc(row.first_failure_at) or system_clock(),
            failures=failures,
        )

    def _schedule_retry(self, key: tuple[str, int], retry: PendingRetry) -> None:
        """Keep the retry in memory and in the database (its own short transaction)."""
        self.pending[key] = retry
        pr = tables.pending_retries
        failures = json.dumps(
            [
                {
                    "exception_type": f.exception_type,
                    "message": f.message,
                    "traceback": f.traceback,
                    "at": f.at.isoformat(),
                }
                for f in retry.failures
            ]
        )
        with self.config.engine.begin() as conn:
            conn.execute(pr.delete().where(self._retry_row(key)))
            conn.execute(
                pr.insert().values(
                    log=self.config.log.name,
                    subscriber=key[0],
                    partition=key[1],
                    event_id=retry.event_id,
                    next_attempt=retry.next_attempt,
                    due_at=retry.due,
                    first_failure_at=retry.first_failure,
                    failures=failures,
                )
            )
        self._stored_retries.add(key)

    def _drop_retry(self, key: tuple[str, int]) -> None:
        self.pending.pop(key, None)
        if key not in self._stored_retries:
            return  # nothing stored: no round trip on the common path
        pr = tables.pending_retries
        with self.config.engine.begin() as conn:
            conn.execute(pr.delete().where(self._retry_row(key)))
        self._stored_retries.discard(key)

    def _process(self, subscriber: Subscriber, partition: int) -> int:
        key = (subscriber.name, partition)
        retry = self._pending_retry(key)
        if retry is not None and retry.due > self.clock():
            return 0
        start = self.positions.get(key)
        if start is None:
            start = self.positions[key] = self.checkpoint(subscriber.name, partition)
        page = self._page_read_ahead(key, start) or self._page(subscriber, partition, start)
        rows, work = page.rows, page.work
        if not rows:
            return 0
        self._page_rows = len(rows)
        last = Checkpoint(int(rows[-1][_TX]), int(rows[-1][_POSITION]))
        if retry is not None:
            if not work or work[0][1].event_id != retry.event_id:
                # Someone else delivered it meanwhile (our lease lapsed): forget the retry.
                self._drop_retry(key)
            else:
                index, item = work[0]
                self._deliver_alone(subscriber, partition, start, item, retry)
                return index + 1
        if self._reads_ahead and len(rows) == self.config.batch_size:
            # A full page: more is likely waiting. Read it while this one is handled; it is
            # used only if this page's checkpoint move commits (the next read starts there).
            self._read_ahead(subscriber, partition, last)
        items = [item for _, item in work]
        try:
            try:
                self._run(
                    subscriber,
                    partition,
                    start,
                    last,
                    items,
                    attempt=1,
                    batched=subscriber.batch is not None and len(items) > 1,
                )
            except _HandlerFailed as failed:
                if not failed.batched:
                    raise
                # A batch call does not say which event failed: deliver the same batch event by
                # event, so the retry policy and the dead letters apply to that event alone.
                # Events the batch call already handled are handled again (at least once).
                self._run(subscriber, partition, start, last, items, attempt=1)
            return len(rows)
        except _HandlerFailed as failed:
            failing = failed.index if failed.index is not None else 0
            if not work:
                raise failed.cause from None
            if failing > 0:
                row_before = work[failing][0] - 1
                before = Checkpoint(int(rows[row_before][_TX]), int(rows[row_before][_POSITION]))
                prefix = [item for _, item in work[:failing]]
                try:
                    self._run(subscriber, partition, start, before, prefix, attempt=1)
                except _HandlerFailed:
                    # Fails only in the commit (not reproducible per item): go one at a time.
                    failing = 0
                else:
                    start = before
            index, item = work[failing]
            first = failed.cause if failed.index is not None and failing == failed.index else None
            self._deliver_alone(subscriber, partition, start, item, None, first_failure=first)
            return index + 1

    # -- transactions ------------------------------------------------------------------------

    def _run(
        self,
        subscriber: Subscriber,
        partition: int,
        start: Checkpoint,
        end: Checkpoint,
        items: Sequence[Item],
        *,
        attempt: int,
        batched: bool = False,
    ) -> None:
        """One transaction: handle ``items``, move the checkpoint from ``start`` to ``end``.

        ``batched``: hand the decodable items to the subscriber's batch handler in one call
        instead of invoking its handlers per item.
        """
        batch: list[Envelope[Any]] | None = [] if batched else None
        uow = self.config.unit_of_work()
        with uow:
            parked = (
                self._parked_streams(uow.connection, subscriber.name)
                if self._may_park(subscriber)
                else {}
            )
            for index, item in enumerate(items):
                stream = item.stream_id
                if stream is not None and stream in parked:
                    self._hold(uow.session, subscriber, item, parked[stream])
                elif item.envelope is None:
                    assert item.error is not None
                    letter = self._dead_letter(
                        uow.session,
                        subscriber,
                        item,
                        reason="undecodable",
                        attempts=0,
                        failures=[Failure.of(item.error)],
                    )
                    if stream is not None and subscriber.policy.on_failure is OnFailure.PARK:
                        parked[stream] = letter
                elif batch is not None:
                    batch.append(item.envelope)
                else:
                    try:
                        self.invoke(subscriber, item.envelope, uow, attempt)
                    except Exception as exc:
                        raise _HandlerFailed(index, exc) from exc
            if batch:
                assert subscriber.batch is not None
                try:
                    self.invoke.batch(subscriber, subscriber.batch, batch, uow, attempt)
                except Exception as exc:
                    raise _HandlerFailed(None, exc, batched=True) from exc
            # On the connection, not the session: a subscriber that does not use the ORM then
            # never pays for a Session (the unit of work creates one only when asked).
            self._advance(uow.connection, subscriber.name, partition, start, end)
            try:
                uow.commit()
            except LostPartition:
                raise
            except Exception as exc:
                raise _HandlerFailed(None, exc, batched=batched) from exc
        self.positions[(subscriber.name, partition)] = end

    def _deliver_alone(
        self,
        subscriber: Subscriber,
        partition: int,
        start: Checkpoint,
        item: Item,
        retry: PendingRetry | None,
        *,
        first_failure: BaseException | None = None,
    ) -> None:
        """Deliver one message under the retry policy, dead-lettering it when exhausted."""
        key = (subscriber.name, partition)
        policy = subscriber.policy.retry
        failures = list(retry.failures) if retry else []
        attempt = retry.next_attempt if retry else 1
        if first_failure is not None:
            failures.append(Failure.of(first_failure))
        while True:
            if first_failure is None:
                try:
                    self._run(
                        subscriber, partition, start, item.checkpoint, [item], attempt=attempt
                    )
                except _HandlerFailed as failed:
                    failures.append(Failure.of(failed.cause))
                else:
                    self._drop_retry(key)
                    return
            first_failure = None
            delay = policy.delay_after(attempt)
            logger.warning(
                "subscriber %s failed on %s (attempt %d): %s",
                subscriber.name,
                item.stored.describe(),
                attempt,
                failures[-1].message,
            )
            if delay is None:
                self._bury(subscriber, partition, start, item, attempt, failures)
                self._drop_retry(key)
                return
            attempt += 1
            if delay > 0:
                self._schedule_retry(
                    key,
                    PendingRetry(
                        event_id=item.event_id,
                        next_attempt=attempt,
                        due=self.clock() + delay,
                        first_failure=failures[0].at,
                        failures=failures,
                    ),
                )
                return

    def _bury(
        self,
        subscriber: Subscriber,
        partition: int,
        start: Checkpoint,
        item: Item,
        attempts: int,
        failures: Sequence[Failure],
    ) -> None:
        with self.config.engine.begin() as conn:
            session = Session(bind=conn)
            parked = self._parked_streams(conn, subscriber.name)
            stream = item.stored.stream_id
            if stream is not None and stream in parked:
                self._hold(session, subscriber, item, parked[stream])
            else:
                self._dead_letter(
                    session,
                    subscriber,
                    item,
                    reason="handler",
                    attempts=attempts,
                    failures=failures,
                )
            self._advance(conn, subscriber.name, partition, start, item.checkpoint)
        self.positions[(subscriber.name, partition)] = item.checkpoint
        logger.error(
            "subscriber %s: %s dead-lettered after %d attempts",
            subscriber.name,
            item.stored.describe(),
            attempts,
        )

    # -- statements inside a transaction -------------------------------------------------------

    def _advance(
        self,
        connection: Connection,
        subscriber: str,
        partition: int,
        start: Checkpoint,
        end: Checkpoint,
    ) -> None:
        params = {
            "cp_subscriber": subscriber,
            "cp_partition": partition,
            "from_tx": start.tx,
            "from_position": start.position,
            "to_tx": end.tx,
            "to_position": end.position,
            "cp_updated_at": system_clock(),
        }
        # On the driver's cursor; on psycopg, as the transaction's first statement, it travels
        # with its BEGIN: one round trip instead of two on every batch whose handlers have not
        # written yet (ORM handlers write when the unit of work flushes). It is not moved to
        # the start of every transaction instead: it would then give the transaction its id
        # while the handlers run, and hold back every follower's commit-order fence meanwhile.
        moved = update_direct(connection, self._advance_statement, params)
        if moved != 1:
            raise LostPartition(
                f"subscriber {subscriber!r} partition {partition} moved past {start} "
                "in another relay; this transaction was rolled back"
            )

    def _may_park(self, subscriber: Subscriber) -> bool:
        known = self.may_park.get(subscriber.name)
        if known is None:
            ps = tables.parked_streams
            with self.reader.connect() as conn:
                found = conn.execute(
                    select(ps.c.stream_id)
                    .where(ps.c.log == self.config.log.name, ps.c.subscriber == subscriber.name)
                    .limit(1)
                ).first()
            known = subscriber.policy.on_failure is OnFailure.PARK or found is not None
            self.may_park[subscriber.name] = known
        return known

    def _parked_streams(self, connection: Connection, subscriber: str) -> dict[str, int]:
        ps = tables.parked_streams
        # FOR UPDATE: a concurrent release (tidings dlq replay/discard) must not delete the
        # parking while this transaction adds a message behind it.
        rows = connection.execute(
            select(ps.c.stream_id, ps.c.dead_letter_id)
            .where(ps.c.log == self.config.log.name, ps.c.subscriber == subscriber)
            .with_for_update()
        ).all()
        return {row.stream_id: int(row.dead_letter_id) for row in rows}

    def _dead_letter(
        self,
        session: Session,
        subscriber: Subscriber,
        item: Item,
        *,
        reason: str,
        attempts: int,
        failures: Sequence[Failure],
    ) -> int:
        values = dead_letter_values(
            self.config,
            subscriber.name,
            item,
            status="failed",
            reason=reason,
            attempts=attempts,
            failures=failures,
        )
        letter = int(
            session.execute(
                insert(tables.dead_letters).values(values).returning(tables.dead_letters.c.id)
            ).scalar_one()
        )
        stream = item.stored.stream_id
        if stream is not None and subscriber.policy.on_failure is OnFailure.PARK:
            session.execute(
                insert(tables.parked_streams).values(
                    log=self.config.log.name,
                    subscriber=subscriber.name,
                    stream_id=stream,
                    dead_letter_id=letter,
                    parked_at=system_clock(),
                )
            )
        return letter

    def _hold(self, session: Session, subscriber: Subscriber, item: Item, behind: int) -> None:
        values = dead_letter_values(
            self.config,
            subscriber.name,
            item,
            status="held",
            reason="parked",
            attempts=0,
            failures=[],
        )
        values["exception_message"] = f"waiting behind dead letter {behind}"
        session.execute(insert(tables.dead_letters).values(values))

    def close(self) -> None:
        if self._ahead_pool is not None:
            self._ahead_pool.shutdown(wait=True, cancel_futures=True)
            self._ahead_pool = None
        self._ahead.clear()
        self.invoke.close()
        if self.reader.pool is not self.config.engine.pool:  # our own engine, not a view
            self.reader.dispose()
