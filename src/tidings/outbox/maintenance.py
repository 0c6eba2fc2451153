"""Retention and status: what has been delivered, what is waiting, what has failed.

Lag is counted in log rows after a subscriber's lowest partition checkpoint, including rows of
types the subscriber does not handle (it still has to read past them).

A log row is *delivered* once every (subscriber, partition) checkpoint of that log is at or past
it. Retention deletes delivered rows older than the retention period (default 7 days), keeping a
window for inspection and for subscribers added later that start from the beginning. Rows no
checkpoint has passed are never deleted, whatever their age.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, func, not_, select
from sqlalchemy.engine import Connection, Engine

from tidings.core.envelope import system_clock
from tidings.outbox import tables
from tidings.persistence.log import Checkpoint, after
from tidings.persistence.values import as_uuid


def _checkpoints(conn: Connection, log: str) -> dict[str, list[Checkpoint]]:
    cp = tables.checkpoints
    found: dict[str, list[Checkpoint]] = {}
    for row in conn.execute(select(cp.c.subscriber, cp.c.tx, cp.c.position).where(cp.c.log == log)):
        found.setdefault(row.subscriber, []).append(Checkpoint(int(row.tx), int(row.position)))
    return found


def delivered_up_to(conn: Connection, log: str) -> Checkpoint | None:
    """The lowest checkpoint of every subscriber partition on ``log`` (None: no subscriber)."""
    every = [c for cps in _checkpoints(conn, log).values() for c in cps]
    return min(every) if every else None


#: Rows deleted per retention transaction.
PURGE_CHUNK = 5000


def purge_delivered(
    engine: Engine,
    log: Table,
    older_than: timedelta,
    *,
    now: datetime | None = None,
    chunk: int = PURGE_CHUNK,
) -> int:
    """Delete delivered rows recorded before ``now - older_than``; returns how many.

    In transactions of at most ``chunk`` rows: a long delete would hold SQLite's write lock,
    and on PostgreSQL its transaction would hold back the commit-order fence of every follower
    (they see no row committed after it began until it ends).
    """
    if "recorded_at" not in log.c:
        return 0  # not an outbox (an event store's log is kept forever)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    cutoff = (now or system_clock()) - older_than
    with engine.connect() as conn:
        # Checkpoints only move forward: deleting up to where they were is safe all along.
        upto = delivered_up_to(conn, log.name)
    if upto is None:
        return 0
    passed = not_(after(log, upto))  # at or before the slowest checkpoint
    # The row with the highest position stays, delivered or not: SQLite gives a new row the
    # highest rowid in the table plus one, so once every row was purged it would hand out a
    # position the followers' checkpoints are already past, and they would never see that row.
    # (Tables created by tidings since 2026-12-06 also say AUTOINCREMENT; older ones do not.)
    newest = select(func.max(log.c.position)).scalar_subquery()
    doomed = (
        select(log.c.position)
        .where(passed, log.c.recorded_at < cutoff, log.c.position < newest)
        .order_by(log.c.position)
        .limit(chunk)
        .scalar_subquery()
    )
    purge = delete(log).where(log.c.position.in_(doomed))
    deleted = 0
    while True:
        with engine.begin() as conn:
            count = int(conn.execute(purge).rowcount)
        deleted += count
        if count < chunk:
            return deleted


def _count_after(conn: Connection, log: Table, checkpoint: Checkpoint | None) -> int:
    query = select(func.count()).select_from(log)
    if checkpoint is not None:
        query = query.where(after(log, checkpoint))
    return int(conn.execute(query).scalar_one())


def status(
    engine: Engine, log: Table = tables.outbox, *, now: datetime | None = None
) -> dict[str, Any]:
    """Backlog, oldest undelivered age, per-subscriber lag and dead-letter counts."""
    now = now or system_clock()
    dl = tables.dead_letters
    with engine.connect() as conn:
        per_subscriber = _checkpoints(conn, log.name)
        upto = min((c for cps in per_subscriber.values() for c in cps), default=None)
        backlog = _count_after(conn, log, upto)
        time_column = log.c.recorded_at if "recorded_at" in log.c else log.c.occurred_at
        oldest_query = select(func.min(time_column))
        if upto is not None:
            oldest_query = oldest_query.where(after(log, upto))
        oldest = tables.as_utc(conn.execute(oldest_query).scalar())
        letters: dict[tuple[str, str], int] = {}
        for row in conn.execute(
            select(dl.c.subscriber, dl.c.status, func.count())
            .where(dl.c.log == log.name)
            .group_by(dl.c.subscriber, dl.c.status)
        ):
            letters[(row[0], row[1])] = int(row[2])
        lease = tables.leases
        owners: dict[str, dict[str, list[int]]] = {}
        for row in conn.execute(
            select(lease.c.subscriber, lease.c.partition, lease.c.owner, lease.c.expires_at).where(
                lease.c.log == log.name, lease.c.owner.is_not(None)
            )
        ):
            if row.expires_at >= now.timestamp():
                owners.setdefault(row.subscriber, {}).setdefault(row.owner, []).append(
                    int(row.partition)
                )
        pr = tables.pending_retries
        retrying: dict[str, list[dict[str, Any]]] = {}
        for row in conn.execute(
            select(pr.c.subscriber, pr.c.partition, pr.c.event_id, pr.c.next_attempt, pr.c.due_at)
            .where(pr.c.log == log.name)
            .order_by(pr.c.subscriber, pr.c.partition)
        ):
            retrying.setdefault(row.subscriber, []).append(
                {
                    "partition": int(row.partition),
                    "event_id": str(as_uuid(row.event_id)),
                    "next_attempt": int(row.next_attempt),
                    "due_in_seconds": round(float(row.due_at) - now.timestamp(), 3),
                }
            )
        subscribers = []
        for name in sorted(set(per_subscriber) | {s for s, _ in letters}):
            checkpoints = per_subscriber.get(name, [])
            lowest = min(checkpoints) if checkpoints else None
            subscribers.append(
                {
                    "subscriber": name,
                    "partitions": len(checkpoints),
                    "checkpoint": str(lowest) if lowest is not None else None,
                    "lag": _count_after(conn, log, lowest) if checkpoints else None,
                    "dead_letters": letters.get((name, "failed"), 0),
                    "held": letters.get((name, "held"), 0),
                    # Partitions waiting for a delayed retry of their head event.
                    "retrying": retrying.get(name, []),
                    # Which live relay holds which partitions.
                    "relays": {node: sorted(parts) for node, parts in owners.get(name, {}).items()},
                }
            )
    return {
        "log": log.name,
        "backlog": backlog,
        "oldest_undelivered_age_seconds": (
            round((now - oldest).total_seconds(), 3) if oldest is not None else None
        ),
        "subscribers": subscribers,
        "dead_letters": sum(n for (_, st), n in letters.items() if st == "failed"),
        "held": sum(n for (_, st), n in letters.items() if st == "held"),
        "as_of": now.astimezone(UTC).isoformat(),
    }
