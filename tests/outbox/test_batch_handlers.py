"""Batch handlers: the relay hands a whole batch to a subscriber's ``handle_batch`` in one call.

On SQLite and PostgreSQL alike: one call per batch, effects and checkpoint in one transaction; a
failing batch call falls back to per-event delivery, where the retry policy and the dead letters
apply to the event that fails, and nothing is lost or applied twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from tidings import HandlerContext, Handlers, Timing
from tidings.outbox import DeadLetters, Relay, RelayConfig, RetryPolicy, SubscriberPolicy
from tidings.outbox import tables as outbox_tables
from tidings.outbox.subscribers import BatchHandler, Subscriber, build_subscribers

from .app import Deposited, LedgerBug, Noted, deposit, effects, record_effect
from .conftest import Store


class Ledger:
    """Books deposits; counts how it was called. ``poison``: seqs it refuses, in both forms."""

    def __init__(self, poison: Sequence[int] = (), *, batch_fails: int = 0) -> None:
        self.book = record_effect("ledger")
        self.poison = set(poison)
        self.batch_fails = batch_fails
        self.batches: list[list[int]] = []
        self.singles: list[int] = []

    def __call__(self, deposited: Deposited, ctx: HandlerContext) -> None:
        self.singles.append(deposited.seq)
        if deposited.seq in self.poison:
            raise LedgerBug(f"poison #{deposited.seq}")
        self.book(deposited, ctx)

    def handle_batch(self, contexts: Sequence[HandlerContext]) -> None:
        seqs = [ctx.envelope.event.seq for ctx in contexts]
        self.batches.append(seqs)
        for ctx in contexts:
            # Effects of a failing batch are written, then rolled back with its transaction.
            self.book(ctx.envelope.event, ctx)
            if ctx.envelope.event.seq in self.poison:
                raise LedgerBug(f"poison #{ctx.envelope.event.seq} in a batch")
        if self.batch_fails:
            self.batch_fails -= 1
            raise ConnectionError("the batch's commit point failed")


def wiring(store: Store, ledger: Ledger, **kwargs: object) -> RelayConfig:
    handlers = Handlers()
    handlers.add(Deposited, ledger, when=Timing.AFTER_COMMIT, name="ledger")
    return RelayConfig(
        store.engine,
        handlers,
        partitions=1,
        default_policy=SubscriberPolicy(RetryPolicy(immediate=1, delayed=0)),
        listen=False,
        **kwargs,  # type: ignore[arg-type]
    )


def checkpoint(store: Store) -> int:
    cp = outbox_tables.checkpoints
    with store.engine.connect() as conn:
        return int(conn.execute(select(cp.c.position).where(cp.c.subscriber == "ledger")).one()[0])


def test_a_batch_handler_gets_the_whole_batch_in_one_call(store: Store) -> None:
    ledger = Ledger()
    assert isinstance(ledger, BatchHandler)
    config = wiring(store, ledger, batch_size=4)
    for seq in range(10):
        deposit(config, f"acc-{seq % 3}", 1, seq)
    Relay(config, node="test-relay").run_until_idle()
    deposit(config, "acc-1", 1, 10)
    Relay(config, node="test-relay").run_until_idle()  # a batch of one: __call__
    assert ledger.singles == [10]
    ledger.singles.clear()

    assert ledger.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # batch_size rows at most
    assert ledger.singles == []
    assert sorted(e.seq for e in effects(store.engine)) == list(range(11))
    delivery_ids = {e.delivery_id for e in effects(store.engine)}
    assert len(delivery_ids) == 11 and all(d.startswith("ledger:") for d in delivery_ids)


def test_a_failing_batch_is_delivered_event_by_event_without_loss(store: Store) -> None:
    ledger = Ledger(batch_fails=1)
    config = wiring(store, ledger)
    for seq in range(5):
        deposit(config, "acc-1", 1, seq)
    relay = Relay(config, node="test-relay")
    relay.prepare()
    start = checkpoint(store)

    relay.run_until_idle()

    assert ledger.batches == [[0, 1, 2, 3, 4]]  # failed after booking everything: rolled back
    assert ledger.singles == [0, 1, 2, 3, 4]  # then the same batch, one event at a time
    assert [e.seq for e in effects(store.engine)] == [0, 1, 2, 3, 4]  # each exactly once
    assert checkpoint(store) > start
    assert DeadLetters(store.engine).find() == []


def test_a_poison_event_in_a_batch_is_dead_lettered_alone(store: Store) -> None:
    ledger = Ledger(poison=[2])
    config = wiring(store, ledger)
    for seq in range(5):
        deposit(config, "acc-1", 1, seq)
    Relay(config, node="test-relay").run_until_idle()

    assert ledger.batches[0] == [0, 1, 2, 3, 4]
    assert [e.seq for e in effects(store.engine)] == [0, 1, 3, 4]
    [letter] = DeadLetters(store.engine).find()
    assert letter.reason == "handler"
    assert letter.attempts == 2  # the policy's attempts, counted per event as without batches
    assert letter.exception_message == "poison #2"


def test_only_a_subscriber_whose_one_handler_takes_batches_is_batched(store: Store) -> None:
    ledger = Ledger()
    same = Handlers()
    for event_type in (Deposited, Noted):  # one object for several types: still one handler
        same.add(event_type, ledger, when=Timing.AFTER_COMMIT, name="ledger")
    mixed = Handlers()
    mixed.add(Deposited, ledger, when=Timing.AFTER_COMMIT, name="ledger")
    mixed.add(Noted, lambda noted: None, when=Timing.AFTER_COMMIT, name="ledger")
    plain = Handlers()
    plain.add(Deposited, record_effect("ledger"), when=Timing.AFTER_COMMIT, name="ledger")

    def subscriber(handlers: Handlers) -> Subscriber:
        [found] = build_subscribers(RelayConfig(store.engine, handlers, listen=False))
        return found

    assert subscriber(same).batch is ledger
    # Two handlers: their per-event interleaving is kept, so no batch call.
    assert subscriber(mixed).batch is None
    assert subscriber(plain).batch is None
