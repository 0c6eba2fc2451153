"""The dead-letter store: list, inspect, replay, discard.

A dead letter keeps the original message whole (metadata, headers, payload bytes), the subscriber
it failed for, the attempts, the first and last failure time, and the last exception's type,
message and traceback. ``status`` is ``failed`` for a message that failed or could not be
decoded, ``held`` for one that waits behind a failed one of the same stream (subscribers with
:attr:`~tidings.outbox.retry.OnFailure.PARK`).

*Replay* delivers the exact stored event (same id, same bytes, same delivery id) to the same
subscriber, with no business logic of its own. Its idempotency guard has the same shape as the
relay's checkpoint: the record of what is still to do (here, the dead-letter row) is removed by a
conditional ``DELETE ... WHERE id = :id AND status = :status`` in the *same transaction* as the
handler's effects, so two concurrent replays (or a replay racing a discard) apply it once. When
the replayed (or discarded) message had parked its stream, the messages held behind it are then
delivered in order the same way, one transaction each, and the stream is released; if one of
them fails it becomes the stream's new failed dead letter and the stream stays parked.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, select, update
from sqlalchemy.engine import Engine, RowMapping
from sqlalchemy.orm import Session

from tidings.core.messages import StoredEvent, to_envelope
from tidings.errors import CodecError, ConfigurationError, TidingsError
from tidings.outbox import tables
from tidings.outbox.config import RelayConfig
from tidings.outbox.subscribers import Failure, Invoker, Subscriber, build_subscribers
from tidings.persistence.log import Checkpoint


class DeadLetterError(TidingsError):
    """A dead-letter operation could not be done (not found, wrong state, failed again)."""


@dataclass(frozen=True)
class DeadLetter:
    id: int
    log: str
    subscriber: str
    status: str
    reason: str
    checkpoint: Checkpoint
    stored: StoredEvent
    attempts: int
    first_failure_at: datetime | None
    last_failure_at: datetime | None
    exception_type: str | None
    exception_message: str | None
    traceback: str | None
    dead_lettered_at: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> DeadLetter:
        return cls(
            id=int(row["id"]),
            log=row["log"],
            subscriber=row["subscriber"],
            status=row["status"],
            reason=row["reason"],
            checkpoint=Checkpoint(int(row["log_tx"]), int(row["log_position"])),
            stored=tables.stored_from_row(row),
            attempts=int(row["attempts"]),
            first_failure_at=tables.as_utc(row["first_failure_at"]),
            last_failure_at=tables.as_utc(row["last_failure_at"]),
            exception_type=row["exception_type"],
            exception_message=row["exception_message"],
            traceback=row["traceback"],
            dead_lettered_at=tables.as_utc(row["dead_lettered_at"]) or datetime.min,
        )

    def summary(self) -> dict[str, Any]:
        s = self.stored
        return {
            "id": self.id,
            "subscriber": self.subscriber,
            "status": self.status,
            "reason": self.reason,
            "event_id": str(s.event_id),
            "event_type": s.event_type,
            "event_version": s.event_version,
            "stream_id": s.stream_id,
            "stream_version": s.stream_version,
            "attempts": self.attempts,
            "first_failure_at": _iso(self.first_failure_at),
            "last_failure_at": _iso(self.last_failure_at),
            "exception_type": self.exception_type,
            "exception_message": self.exception_message,
            "dead_lettered_at": _iso(self.dead_lettered_at),
        }

    def detail(self) -> dict[str, Any]:
        s = self.stored
        try:
            payload: dict[str, str] = {"text": s.payload.decode()}
        except UnicodeDecodeError:
            payload = {"base64": base64.b64encode(s.payload).decode()}
        return {
            **self.summary(),
            "log": self.log,
            "log_position": str(self.checkpoint),
            "occurred_at": _iso(s.occurred_at),
            "correlation_id": str(s.correlation_id),
            "causation_id": str(s.causation_id) if s.causation_id else None,
            "producer": s.producer,
            "headers": s.headers,
            "payload": payload,
            "traceback": self.traceback,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class DeadLetters:
    """Operations on the dead letters of one log."""

    def __init__(self, engine: Engine, log: Table | str = tables.outbox) -> None:
        self.engine = engine
        self.log = log if isinstance(log, str) else log.name

    def find(
        self,
        *,
        subscriber: str | None = None,
        event_type: str | None = None,
        stream: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        status: str | None = "failed",
        limit: int = 1000,
    ) -> Sequence[DeadLetter]:
        dl = tables.dead_letters
        query = select(dl).where(dl.c.log == self.log)
        if subscriber is not None:
            query = query.where(dl.c.subscriber == subscriber)
        if event_type is not None:
            query = query.where(dl.c.event_type == event_type)
        if stream is not None:
            query = query.where(dl.c.stream_id == stream)
        if since is not None:
            query = query.where(dl.c.dead_lettered_at >= since)
        if until is not None:
            query = query.where(dl.c.dead_lettered_at < until)
        if status is not None:
            query = query.where(dl.c.status == status)
        query = query.order_by(dl.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [DeadLetter.from_row(row) for row in conn.execute(query).mappings()]

    def get(self, letter_id: int) -> DeadLetter:
        dl = tables.dead_letters
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(dl).where(dl.c.id == letter_id, dl.c.log == self.log))
                .mappings()
                .one_or_none()
            )
        if row is None:
            raise DeadLetterError(f"no dead letter with id {letter_id} on {self.log!r}")
        return DeadLetter.from_row(row)

    # -- replay / discard ----------------------------------------------------------------------

    def replay(self, config: RelayConfig, letter_id: int) -> Sequence[int]:
        """Deliver a failed dead letter again; returns the ids of held letters released after it.

        Raises :class:`DeadLetterError` if it fails again (the failure is recorded on it).
        """
        letter = self._failed(letter_id)
        subscriber = _subscriber(config, letter.subscriber)
        self._deliver(config, subscriber, letter)
        return self._release(config, subscriber, letter)

    def discard(self, letter_id: int, config: RelayConfig | None = None) -> Sequence[int]:
        """Delete a failed dead letter; messages held behind it are then delivered in order
        (which needs ``config``, for the subscriber's handlers)."""
        letter = self._failed(letter_id)
        held = self._held_behind(letter)
        if held and config is None:
            raise DeadLetterError(
                f"{len(held)} message(s) of stream {letter.stored.stream_id!r} wait behind dead "
                f"letter {letter_id}; pass the application (--app) so they can be delivered"
            )
        dl = tables.dead_letters
        with self.engine.begin() as conn:
            gone = conn.execute(
                delete(dl).where(dl.c.id == letter_id, dl.c.status == "failed")
            ).rowcount
        if not gone:
            raise DeadLetterError(f"dead letter {letter_id} was resolved meanwhile")
        if config is None:
            return []
        return self._release(config, _subscriber(config, letter.subscriber), letter)

    def _failed(self, letter_id: int) -> DeadLetter:
        letter = self.get(letter_id)
        if letter.status != "failed":
            raise DeadLetterError(
                f"dead letter {letter_id} is {letter.status!r}: it waits behind a failed message "
                f"of stream {letter.stored.stream_id!r}; replay or discard that one"
            )
        return letter

    def _held_behind(self, letter: DeadLetter) -> Sequence[int]:
        if letter.stored.stream_id is None:
            return []
        dl = tables.dead_letters
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(dl.c.id).where(
                        dl.c.log == self.log,
                        dl.c.subscriber == letter.subscriber,
                        dl.c.stream_id == letter.stored.stream_id,
                        dl.c.status == "held",
                    )
                ).scalars()
            )

    def _deliver(self, config: RelayConfig, subscriber: Subscriber, letter: DeadLetter) -> None:
        """Handle ``letter`` and delete it in one transaction, or record the new failure."""
        invoke = Invoker()
        dl = tables.dead_letters
        try:
            envelope = to_envelope(letter.stored, config.codec)
            uow = config.unit_of_work()
            with uow:
                self._lock_parking(uow.session, letter)
                invoke(subscriber, envelope, uow, letter.attempts + 1)
                gone = uow.session.execute(
                    delete(dl).where(dl.c.id == letter.id, dl.c.status == letter.status)
                ).rowcount  # type: ignore[attr-defined]
                if not gone:
                    raise DeadLetterError(f"dead letter {letter.id} was resolved meanwhile")
                uow.commit()
        except DeadLetterError:
            raise
        except Exception as exc:
            self._record_failure(
                letter, exc, reason="undecodable" if isinstance(exc, CodecError) else "handler"
            )
            raise DeadLetterError(
                f"dead letter {letter.id} failed again for {letter.subscriber}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            invoke.close()

    def _release(
        self, config: RelayConfig, subscriber: Subscriber, head: DeadLetter
    ) -> Sequence[int]:
        """Deliver, in order, the messages held behind ``head``; unpark the stream when done."""
        stream = head.stored.stream_id
        if stream is None:
            return []
        ps = tables.parked_streams
        dl = tables.dead_letters
        released: list[int] = []
        while True:
            with self.engine.begin() as conn:
                session = Session(bind=conn)
                parking = self._lock_parking(session, head)
                if parking is None or int(parking) != head.id:
                    return released
                row = (
                    session.execute(
                        select(dl)
                        .where(
                            dl.c.log == self.log,
                            dl.c.subscriber == head.subscriber,
                            dl.c.stream_id == stream,
                            dl.c.status == "held",
                        )
                        .order_by(dl.c.log_tx, dl.c.log_position)
                        .limit(1)
                    )
                    .mappings()
                    .one_or_none()
                )
                if row is None:
                    session.execute(
                        delete(ps).where(
                            ps.c.log == self.log,
                            ps.c.subscriber == head.subscriber,
                            ps.c.stream_id == stream,
                        )
                    )
                    return released
                # Hand the parking over to the next held message while it is delivered.
                nxt = DeadLetter.from_row(row)
                session.execute(
                    update(ps)
                    .where(
                        ps.c.log == self.log,
                        ps.c.subscriber == head.subscriber,
                        ps.c.stream_id == stream,
                    )
                    .values(dead_letter_id=nxt.id)
                )
            try:
                self._deliver_held(config, subscriber, nxt)
            except DeadLetterError:
                dl_update = update(dl).where(dl.c.id == nxt.id, dl.c.status == "held")
                with self.engine.begin() as conn:
                    conn.execute(dl_update.values(status="failed"))
                return released
            released.append(nxt.id)
            head = nxt

    def _deliver_held(
        self, config: RelayConfig, subscriber: Subscriber, letter: DeadLetter
    ) -> None:
        """A held message was never tried: it gets the subscriber's immediate retries (a
        replayed failed one gets one attempt: the operator asked for exactly that)."""
        retries = subscriber.policy.retry.immediate
        for attempt in range(retries + 1):
            try:
                self._deliver(config, subscriber, letter)
                return
            except DeadLetterError:
                if attempt == retries:
                    raise
                letter = self.get(letter.id)  # with the failure just recorded

    def _lock_parking(self, session: Session, letter: DeadLetter) -> int | None:
        if letter.stored.stream_id is None:
            return None
        ps = tables.parked_streams
        found = session.execute(
            select(ps.c.dead_letter_id)
            .where(
                ps.c.log == self.log,
                ps.c.subscriber == letter.subscriber,
                ps.c.stream_id == letter.stored.stream_id,
            )
            .with_for_update()
        ).scalar_one_or_none()
        return None if found is None else int(found)

    def _record_failure(self, letter: DeadLetter, exc: BaseException, *, reason: str) -> None:
        failure = Failure.of(exc)
        dl = tables.dead_letters
        with self.engine.begin() as conn:
            conn.execute(
                update(dl)
                .where(dl.c.id == letter.id)
                .values(
                    attempts=letter.attempts + 1,
                    reason=reason,
                    first_failure_at=letter.first_failure_at or failure.at,
                    last_failure_at=failure.at,
                    exception_type=failure.exception_type,
                    exception_message=failure.message,
                    traceback=failure.traceback,
                )
            )


def _subscriber(config: RelayConfig, name: str) -> Subscriber:
    for subscriber in build_subscribers(config):
        if subscriber.name == name:
            return subscriber
    raise ConfigurationError(
        f"the application has no after-commit subscriber named {name!r}; known: "
        f"{sorted(config.handlers.subscribers())}"
    )


def describe_many(letters: Sequence[DeadLetter]) -> str:
    if not letters:
        return "no dead letters"
    lines = []
    for letter in letters:
        s = letter.stored
        where = f"{s.stream_id}@{s.stream_version}" if s.stream_id else "-"
        lines.append(
            f"{letter.id:>6}  {letter.status:<6} {letter.subscriber:<30} {s.event_type:<30} "
            f"{where:<30} attempts={letter.attempts} {letter.exception_type or ''}: "
            f"{(letter.exception_message or '')[:80]}"
        )
    return "\n".join(lines)
