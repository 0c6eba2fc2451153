"""After-commit delivery: the transactional outbox, the relay, retries and dead letters.

How it fits together:

1. **Writing.** :class:`OutboxParticipant` joins the SQL unit of work. Every committed event that
   has an after-commit subscriber (or goes to a bus) gets one outbox row, inserted in the same
   transaction as the state change: no commit without its rows, no rows without the commit.
2. **Following.** The :class:`Relay` reads the log (the outbox, or any table with the same columns,
   such as an event store's events table, which then needs no second write) gap-safely: rows are
   ordered by ``(tx, position)`` and read only below the oldest transaction still running
   (:mod:`tidings.persistence.log`), so a transaction that commits late is never skipped.
3. **Effectively once.** Each subscriber has a checkpoint per partition (streams are spread over
   partitions by a stable hash, so one stream is always in one partition, in order). The
   handler runs in a unit of work (``ctx.uow``) and the checkpoint moves, compare-and-set, in
   that same transaction: a crash re-delivers, and nothing is applied twice.
   ``ctx.delivery_id`` (``"subscriber:event_id"``) is stable across redeliveries, for external
   systems.
4. **Several relays.** Partition leases expire and are renewed by heartbeat; live relays split
   partitions fairly; a dead relay's partitions are taken over after ``lease_seconds``
   (:mod:`tidings.outbox.leases`).
5. **Failure.** :class:`RetryPolicy` (immediate, then exponential backoff with full jitter), then
   the dead-letter store (:class:`DeadLetters`), per subscriber :attr:`OnFailure.SKIP` or
   :attr:`OnFailure.PARK`. Undecodable messages are dead-lettered at once.
"""

from __future__ import annotations

from tidings.outbox.config import RelayConfig
from tidings.outbox.deadletters import DeadLetter, DeadLetterError, DeadLetters
from tidings.outbox.delivery import LostPartition
from tidings.outbox.maintenance import purge_delivered, status
from tidings.outbox.participant import (
    Doorbell,
    LogNotifier,
    OutboxParticipant,
    PostCommitNotifier,
    listen_channel,
    notify_channel,
)
from tidings.outbox.relay import Relay
from tidings.outbox.retry import OnFailure, RetryPolicy, SubscriberPolicy
from tidings.outbox.subscribers import BatchHandler, delivery_id, partition_of
from tidings.outbox.tables import (
    create_tables,
    event_columns,
    log_table,
    metadata,
    stored_from_row,
)
from tidings.outbox.tables import outbox as outbox_table

__all__ = [
    "BatchHandler",
    "DeadLetter",
    "DeadLetterError",
    "DeadLetters",
    "Doorbell",
    "LogNotifier",
    "LostPartition",
    "OnFailure",
    "OutboxParticipant",
    "PostCommitNotifier",
    "Relay",
    "RelayConfig",
    "RetryPolicy",
    "SubscriberPolicy",
    "create_tables",
    "delivery_id",
    "event_columns",
    "listen_channel",
    "log_table",
    "metadata",
    "notify_channel",
    "outbox_table",
    "partition_of",
    "purge_delivered",
    "status",
    "stored_from_row",
]
