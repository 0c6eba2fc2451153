"""The relay: follows a log and delivers it to after-commit subscribers, in a loop.

Run it as a process (``tidings relay --url ... --app module:attr``), or in-process::

    relay = Relay(config)
    relay.start()            # a daemon thread; relay.stop() to end it
    ...
    relay.run_until_idle()   # or step it by hand (tests, scripts)

Each step refreshes this node's partition leases when due (:mod:`tidings.outbox.leases`), then
processes every held (subscriber, partition) once (:mod:`tidings.outbox.delivery`), then applies
the retention policy when due. A running relay (:meth:`Relay.run`) does the lease refresh and the
retention in a thread of their own instead, and adopts the refreshed leases between two steps:
they take several transactions, and on a busy machine tens of milliseconds that every event
committed meanwhile would wait for. When a step finds nothing to do, or only pages shorter than
the batch (it has read everything committed before it), the relay waits:

* for the in-process :class:`~tidings.outbox.participant.Doorbell`, rung by writers' units of
  work right after they commit;
* on PostgreSQL, for a ``NOTIFY`` from a writer in any process (a listener thread rings the same
  doorbell);
* otherwise for a poll interval that starts at ``min_poll_interval`` and doubles up to
  ``poll_interval`` while the log stays quiet (the polling fallback; it also catches rows whose
  transaction committed after the fence, which no notification announces twice).

Latency on PostgreSQL has one caveat inherent to the commit-order fence: a row becomes readable
once every transaction *older* than its own has ended, anywhere in the database cluster. A
long-running transaction (a report, a stuck session) therefore delays delivery until it ends;
nothing is skipped, but keep transactions short (``idle_in_transaction_session_timeout``).

A relay killed without a chance to release its leases (SIGKILL, power loss) keeps them until they
expire (``lease_seconds``); one restarted under the same ``node`` name takes them back at once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from tidings.outbox.config import RelayConfig
from tidings.outbox.delivery import Follower, LostPartition
from tidings.outbox.leases import Leases
from tidings.outbox.maintenance import purge_delivered
from tidings.outbox.participant import listen_channel, quote_identifier
from tidings.outbox.subscribers import Subscriber, build_subscribers, ensure_checkpoints

logger = logging.getLogger("tidings.outbox")

#: First re-read delay after a wake-up that found nothing (doubles up to ``poll_interval``).
_AFTER_RING = 0.002


class Relay:
    """Delivers committed events from ``config.log`` to the configured subscribers."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        node: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.node = node or f"relay-{uuid.uuid4().hex[:12]}"
        self.subscribers: list[Subscriber] = build_subscribers(config)
        self.follower = Follower(config, clock=clock)
        self.leases = Leases(
            config.engine,
            config.log.name,
            self.node,
            lease_seconds=config.lease_seconds,
            clock=clock,
        )
        self._prepared = False
        self._next_retention = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: _Listener | None = None
        self._upkeep: _Upkeep | None = None

    # -- stepping ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the subscribers' checkpoint and lease rows (idempotent)."""
        for subscriber in self.subscribers:
            ensure_checkpoints(self.config, subscriber.name)
        self._prepared = True

    def step(self) -> int:
        """One pass over every held partition; returns how many log rows were moved past."""
        if not self._prepared:
            self.prepare()
        upkeep = self._upkeep
        in_background = upkeep is not None and upkeep.is_alive()
        if in_background:
            assert upkeep is not None
            renewed = upkeep.take_leases()
            if renewed is not None:
                self.leases.held = renewed
                self.follower.forget_positions()
        elif self.leases.due():
            self.leases.refresh(self.subscriber_names(), self.config.partitions)
            self.follower.forget_positions()
        moved = 0
        self.follower.more_waiting = False
        for subscriber in self.subscribers:
            for partition in sorted(self.leases.held.get(subscriber.name, ())):
                try:
                    moved += self.follower.process(subscriber, partition)
                except LostPartition as lost:
                    logger.info("%s", lost)
                    self.leases.lose(subscriber.name, partition)
        if not in_background:
            self.apply_retention_when_due()
        return moved

    def subscriber_names(self) -> list[str]:
        return [s.name for s in self.subscribers]

    def apply_retention_when_due(self) -> None:
        if self.clock() >= self._next_retention:
            self._next_retention = self.clock() + self.config.retention_interval
            purge_delivered(self.config.engine, self.config.log, self.config.retention)

    def next_retry_in(self) -> float | None:
        """Seconds until the earliest delayed retry is due (None when none is waiting)."""
        if not self.follower.pending:
            return None
        earliest = min(retry.due for retry in self.follower.pending.values())
        return max(0.0, earliest - self.clock())

    def run_until_idle(self, *, max_steps: int = 100_000, settle: float = 30.0) -> int:
        """Step until everything committed so far is delivered (delayed retries that are not
        due yet excepted).

        On PostgreSQL a committed row can sit behind the fence for a moment (an older
        transaction is still open somewhere); for up to ``settle`` seconds this waits for it
        rather than returning early.
        """
        total = 0
        deadline = time.monotonic() + settle
        for _ in range(max_steps):
            moved = self.step()
            total += moved
            if moved:
                continue
            if time.monotonic() < deadline and self._behind_fence():
                time.sleep(0.005)
                continue
            return total
        raise RuntimeError(f"relay still busy after {max_steps} steps")

    def _behind_fence(self) -> bool:
        if self.follower.dialect != "postgresql":
            return False  # elsewhere writers commit in log order: no fence
        for subscriber in self.subscribers:
            for partition in self.leases.held.get(subscriber.name, ()):
                if (subscriber.name, partition) in self.follower.pending:
                    continue
                if self.follower.has_committed_backlog(subscriber.name, partition):
                    return True
        return False

    # -- running -----------------------------------------------------------------------------

    def run(self) -> None:
        """Deliver until :meth:`stop` is called (blocks)."""
        self._stop.clear()
        if self.config.listen and self.config.engine.dialect.name == "postgresql":
            self._listener = _Listener(self.config, self._stop)
            self._listener.start()
        idle = self.config.min_poll_interval
        try:
            doorbell = self.config.doorbell
            while not self._stop.is_set():
                # Rings so far are answered by this step's reads (a ring follows its commit),
                # so a ring that stays set after it means rows it could not see.
                doorbell.clear()
                try:
                    moved = self.step()
                except Exception:
                    # A database outage or a bug in the store: log, back off, keep running.
                    logger.exception("relay step failed; retrying")
                    moved = 0
                    idle = self.config.poll_interval
                if self._upkeep is None:
                    # The first step took the leases; from now on they are kept in the
                    # background.
                    self._upkeep = _Upkeep(self, self._stop)
                    self._upkeep.start()
                if self._stop.is_set():
                    break  # its ring may have been cleared before the step (stop() sets first)
                if moved:
                    idle = self.config.min_poll_interval
                    if self.follower.more_waiting:
                        continue
                    # Caught up: reading again at once would find nothing (it did, once per
                    # commit, when the relay keeps up with its writers). Wait for the next
                    # ring, or the shortest poll.
                wait = idle
                retry_in = self.next_retry_in()
                if retry_in is not None:
                    wait = min(wait, retry_in)
                if doorbell.wait(wait):
                    # Something committed. If the next read finds nothing, the row is behind
                    # the fence (an older transaction is still open): look again soon, backing
                    # off, rather than sleeping until the next notification or poll.
                    idle = min(self.config.min_poll_interval, _AFTER_RING)
                else:
                    idle = min(self.config.poll_interval, idle * 2)
        finally:
            if self._listener is not None:
                self._listener.join(timeout=5)
                self._listener = None
            if self._upkeep is not None:
                self._upkeep.join(timeout=30)
                self._upkeep = None
            try:
                self.leases.release_all()
            except Exception:
                logger.exception("could not release leases; they will expire")
            self.follower.close()

    def start(self) -> threading.Thread:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name=self.node, daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask it to stop and wait up to ``timeout`` seconds (None: until it has) for its thread.

        It takes locks: do not call it from a signal handler (see :mod:`tidings.cli.signals`).
        """
        self._stop.set()
        self.config.doorbell.ring()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


class _Upkeep(threading.Thread):
    """Refreshes a running relay's leases and applies its retention policy, off the delivery
    thread. The refreshed leases are handed over, not applied: the delivery thread adopts them
    between two steps (and forgets its cached checkpoints then), as an inline refresh would.
    """

    def __init__(self, relay: Relay, stop: threading.Event) -> None:
        super().__init__(name=f"{relay.node}-upkeep", daemon=True)
        self.relay = relay
        self.stop_event = stop
        self._lock = threading.Lock()
        self._renewed: dict[str, set[int]] | None = None

    def take_leases(self) -> dict[str, set[int]] | None:
        """The leases renewed since the last call, or None."""
        with self._lock:
            renewed, self._renewed = self._renewed, None
            return renewed

    def run(self) -> None:
        relay, config = self.relay, self.relay.config
        # Checked twice per refresh period, so that a wake-up a little early never lets a
        # lease go a whole extra period unrenewed.
        interval = min(config.lease_seconds / 6, config.retention_interval)
        while not self.stop_event.wait(interval):
            try:
                if relay.leases.due():
                    renewed = relay.leases.renew(relay.subscriber_names(), config.partitions)
                    with self._lock:
                        self._renewed = renewed
            except Exception:
                # Leases that cannot be renewed expire; another node may take them, and the
                # checkpoint compare-and-set keeps both from committing the same rows.
                logger.exception("lease refresh failed; retrying")
            try:
                relay.apply_retention_when_due()
            except Exception:
                logger.exception("retention failed; retrying")


class _Listener(threading.Thread):
    """LISTENs on the log's channel and rings the relay's doorbell on every notification."""

    def __init__(self, config: RelayConfig, stop: threading.Event) -> None:
        super().__init__(name="tidings-listen", daemon=True)
        self.config = config
        self.stop_event = stop

    def run(self) -> None:
        log = self.config.log
        while not self.stop_event.is_set():
            try:
                raw = self.config.engine.raw_connection()
                connection: Any = raw.driver_connection  # psycopg's: LISTEN needs its API
                # Detached: the connection is closed for real afterwards, never handed back to
                # the pool in autocommit/listening state.
                raw.detach()
                try:
                    connection.autocommit = True
                    channel, found = listen_channel(connection, log)
                    connection.execute(f"LISTEN {quote_identifier(channel)}")
                    # Anything committed while we were not listening is found by the next poll.
                    self.config.doorbell.ring()
                    while not self.stop_event.is_set():
                        for _ in connection.notifies(timeout=0.5):
                            self.config.doorbell.ring()
                        if not found:
                            # Started before its log was created: once it is, writers announce
                            # on the channel of the schema it is in.
                            channel, found = listen_channel(connection, log)
                            if found:
                                connection.execute(f"LISTEN {quote_identifier(channel)}")
                                self.config.doorbell.ring()
                finally:
                    raw.close()
            except Exception:
                logger.exception("LISTEN connection failed; polling until it is back")
                self.stop_event.wait(1.0)
