"""Sharing subscriber partitions between relay processes: expiring leases and a fair share.

Every relay process is a *node* with a random name. Periodically (every third of the lease
time) it

1. writes its heartbeat into ``tidings_relay_nodes`` for each (log, subscriber) it serves, and
   counts, per subscriber, the live nodes serving that same subscriber of that same log
   (heartbeat younger than the lease time): relays following other logs, or serving other
   subscribers, are not peers and must not shrink each other's share;
2. for each subscriber, computes its fair share, ``ceil(partitions / live peers)``;
3. renews the leases it holds (``expires_at = now + lease_seconds``), releases the ones above its
   share, and claims free or expired ones up to its share. A claim is one conditional
   ``UPDATE ... WHERE owner IS NULL OR expires_at < now OR owner = me``, so two nodes can
   never both claim the same lease.

A node that dies stops renewing; its leases expire after ``lease_seconds`` and the others take
them over, starting from the partition's committed checkpoint: nothing is lost. A node that is
merely slow and loses its lease cannot double-handle either: the checkpoint compare-and-set in
the delivery transaction (see :mod:`tidings.outbox.delivery`) rejects its commit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from tidings.outbox import tables


class Leases:
    """The partitions this node holds, per subscriber, renewed and rebalanced over time."""

    def __init__(
        self,
        engine: Engine,
        log: str,
        node: str,
        *,
        lease_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self.engine = engine
        self.log = log
        self.node = node
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.held: dict[str, set[int]] = {}
        self._last_refresh = -math.inf

    def due(self) -> bool:
        return self.clock() - self._last_refresh >= self.lease_seconds / 3

    def refresh(self, subscribers: Sequence[str], partitions: int) -> dict[str, set[int]]:
        """Renew, release and claim (:meth:`renew`), and hold the result."""
        self.held = self.renew(subscribers, partitions)
        return self.held

    def renew(self, subscribers: Sequence[str], partitions: int) -> dict[str, set[int]]:
        """Heartbeat, renew, release and claim in the database; returns the partitions held
        per subscriber without changing :attr:`held`, so that another thread can run it while
        the relay delivers, and the relay adopts the result between two steps."""
        now = self.clock()
        self._last_refresh = now
        live = self._heartbeat(now, subscribers)
        lease = tables.leases
        held: dict[str, set[int]] = {}
        for subscriber in subscribers:
            share = math.ceil(partitions / max(1, live.get(subscriber, 1)))
            mine = self._owned(subscriber, now)
            # Release above the fair share, highest partitions first.
            for partition in sorted(mine, reverse=True)[: max(0, len(mine) - share)]:
                self._release(subscriber, partition)
                mine.discard(partition)
            with self.engine.begin() as conn:
                if mine:
                    conn.execute(
                        update(lease)
                        .where(
                            lease.c.log == self.log,
                            lease.c.subscriber == subscriber,
                            lease.c.owner == self.node,
                            lease.c.partition.in_(sorted(mine)),
                        )
                        .values(expires_at=now + self.lease_seconds)
                    )
                candidates = conn.execute(
                    select(lease.c.partition)
                    .where(
                        lease.c.log == self.log,
                        lease.c.subscriber == subscriber,
                        or_(lease.c.owner.is_(None), lease.c.expires_at < now),
                    )
                    .order_by(lease.c.partition)
                ).scalars()
                wanted = [p for p in candidates if p not in mine][: max(0, share - len(mine))]
            for partition in wanted:
                if self._claim(subscriber, partition, now):
                    mine.add(partition)
            held[subscriber] = mine
        return held

    def lose(self, subscriber: str, partition: int) -> None:
        """Forget a partition another node turned out to own (its checkpoint moved)."""
        self.held.get(subscriber, set()).discard(partition)

    def release_all(self) -> None:
        lease = tables.leases
        with self.engine.begin() as conn:
            conn.execute(
                update(lease)
                .where(lease.c.log == self.log, lease.c.owner == self.node)
                .values(owner=None, expires_at=0.0)
            )
            conn.execute(
                delete(tables.relay_nodes).where(
                    tables.relay_nodes.c.node == self.node, tables.relay_nodes.c.log == self.log
                )
            )
        self.held.clear()

    def _heartbeat(self, now: float, subscribers: Sequence[str]) -> dict[str, int]:
        """Record that this node serves ``subscribers``; the live node count for each."""
        nodes = tables.relay_nodes
        mine = and_(nodes.c.node == self.node, nodes.c.log == self.log)
        with self.engine.begin() as conn:
            for subscriber in subscribers:
                updated = conn.execute(
                    update(nodes)
                    .where(mine, nodes.c.subscriber == subscriber)
                    .values(heartbeat_at=now)
                ).rowcount
                if not updated:
                    try:
                        with conn.begin_nested():
                            conn.execute(
                                insert(nodes).values(
                                    node=self.node,
                                    log=self.log,
                                    subscriber=subscriber,
                                    heartbeat_at=now,
                                )
                            )
                    except IntegrityError:
                        pass
            # Long-dead nodes are forgotten so the table does not grow without bound.
            conn.execute(delete(nodes).where(nodes.c.heartbeat_at < now - 10 * self.lease_seconds))
            rows = conn.execute(
                select(nodes.c.subscriber, func.count())
                .where(nodes.c.log == self.log, nodes.c.heartbeat_at >= now - self.lease_seconds)
                .group_by(nodes.c.subscriber)
            ).all()
        return {subscriber: int(count) for subscriber, count in rows}

    def _owned(self, subscriber: str, now: float) -> set[int]:
        lease = tables.leases
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    select(lease.c.partition).where(
                        lease.c.log == self.log,
                        lease.c.subscriber == subscriber,
                        lease.c.owner == self.node,
                        lease.c.expires_at >= now,
                    )
                ).scalars()
            )

    def _claim(self, subscriber: str, partition: int, now: float) -> bool:
        lease = tables.leases
        with self.engine.begin() as conn:
            claimed = conn.execute(
                update(lease)
                .where(
                    and_(
                        lease.c.log == self.log,
                        lease.c.subscriber == subscriber,
                        lease.c.partition == partition,
                        or_(
                            lease.c.owner.is_(None),
                            lease.c.expires_at < now,
                            lease.c.owner == self.node,
                        ),
                    )
                )
                .values(owner=self.node, expires_at=now + self.lease_seconds)
            ).rowcount
        return bool(claimed)

    def _release(self, subscriber: str, partition: int) -> None:
        lease = tables.leases
        with self.engine.begin() as conn:
            conn.execute(
                update(lease)
                .where(
                    lease.c.log == self.log,
                    lease.c.subscriber == subscriber,
                    lease.c.partition == partition,
                    lease.c.owner == self.node,
                )
                .values(owner=None, expires_at=0.0)
            )
