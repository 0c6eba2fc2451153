"""A small application for the outbox tests and their child processes.

Accounts receive deposits; each deposit is an event on the account's stream. Subscribers record
their effects in ``outbox_test_effects`` (no unique constraint, so a double application would
show up as a duplicate row instead of an error).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, Integer, String, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tidings import Aggregate, HandlerContext, Handlers
from tidings import event as declare_event
from tidings.outbox import Doorbell, RelayConfig, create_tables
from tidings.persistence.sql import SqlUnitOfWork
from tidings.persistence.sqlite import sqlite_engine


class Base(DeclarativeBase):
    pass


@declare_event(name="tests.outbox.Deposited")
class Deposited:
    account: str
    amount: int
    seq: int


@declare_event(name="tests.outbox.Noted")
class Noted:
    """An event with no after-commit subscriber: it never reaches the outbox."""

    account: str


class Account(Base, Aggregate):
    __tablename__ = "outbox_test_accounts"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    balance: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=0)

    def deposit(self, amount: int, seq: int) -> None:
        self.balance = (self.balance or 0) + amount
        self.record(Deposited(account=self.id, amount=amount, seq=seq))


class Effect(Base):
    __tablename__ = "outbox_test_effects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subscriber: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(64))
    delivery_id: Mapped[str] = mapped_column(String(128))
    stream_id: Mapped[str] = mapped_column(String(64))
    stream_version: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)


#: Accounts whose deposits make the ledger fail (a bug to be "fixed" by removing them).
BROKEN: set[str] = set(filter(None, os.environ.get("OUTBOX_TEST_BROKEN", "").split(",")))


#: Deposits (by seq) that make the ledger fail.
BROKEN_SEQS: set[int] = set()


class LedgerBug(Exception):
    pass


def record_effect(name: str) -> Callable[[Deposited, HandlerContext], None]:
    # A slow handler keeps a relay inside its transactions, where the crash tests kill it.
    delay = float(os.environ.get("OUTBOX_TEST_HANDLER_DELAY", "0"))

    def handle(deposit: Deposited, ctx: HandlerContext) -> None:
        if delay:
            time.sleep(delay)
        if deposit.account in BROKEN or deposit.seq in BROKEN_SEQS:
            raise LedgerBug(f"cannot book {deposit.account} #{deposit.seq}")
        uow = ctx.uow
        assert isinstance(uow, SqlUnitOfWork)
        envelope = ctx.envelope
        uow.session.add(
            Effect(
                subscriber=name,
                event_id=str(envelope.event_id),
                delivery_id=ctx.delivery_id,
                stream_id=envelope.stream_id,
                stream_version=envelope.stream_version,
                seq=deposit.seq,
            )
        )

    return handle


def failing_once(
    name: str, seq: int
) -> tuple[Callable[[Deposited, HandlerContext], None], list[int]]:
    """:func:`record_effect`'s handler, except that deposit ``seq`` fails its first attempt (a
    transient fault); the list gets the number of the attempt that failed."""
    record = record_effect(name)
    failed: list[int] = []

    def handle(deposited: Deposited, ctx: HandlerContext) -> None:
        if deposited.seq == seq and not failed:
            failed.append(ctx.attempt)
            raise ConnectionError(f"{deposited.account} #{seq}: down once")
        record(deposited, ctx)

    return handle, failed


def wait_for(condition: Callable[[], bool], what: str = "", seconds: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail, naming ``what``, after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'} not met within {seconds}s")
        time.sleep(0.01)


class CountingDoorbell(Doorbell):
    """A doorbell that counts its rings."""

    def __init__(self) -> None:
        super().__init__()
        self.rings = 0

    def ring(self) -> None:
        self.rings += 1
        super().ring()


def ledger_handlers(*names: str) -> Handlers:
    handlers = Handlers()
    for name in names or ("ledger",):
        handlers.add(Deposited, record_effect(name), when=_after_commit(), name=name)
    return handlers


def _after_commit() -> Any:
    from tidings import Timing

    return Timing.AFTER_COMMIT


def make_config(engine: Engine) -> RelayConfig:
    """The application wiring the CLI loads with ``--app``."""
    from tidings.outbox import OnFailure, RetryPolicy, SubscriberPolicy

    on_failure = OnFailure(os.environ.get("OUTBOX_TEST_ON_FAILURE", "skip"))
    return RelayConfig(
        engine,
        ledger_handlers("ledger"),
        partitions=int(os.environ.get("OUTBOX_TEST_PARTITIONS", "2")),
        lease_seconds=float(os.environ.get("OUTBOX_TEST_LEASE", "15")),
        default_policy=SubscriberPolicy(
            retry=RetryPolicy(immediate=1, delayed=0), on_failure=on_failure
        ),
    )


def prepare(engine: Engine) -> None:
    create_tables(engine)
    Base.metadata.create_all(engine)


def deposit(config: RelayConfig, account: str, amount: int, seq: int) -> None:
    with config.unit_of_work() as uow:
        found = uow.get(Account, account)
        target = found if found is not None else uow.add(Account(id=account, balance=0, version=0))
        target.deposit(amount, seq)
        uow.commit()


def effects(engine: Engine, subscriber: str | None = None) -> list[Effect]:
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        query = select(Effect).order_by(Effect.id)
        if subscriber is not None:
            query = query.where(Effect.subscriber == subscriber)
        return list(session.scalars(query))


def engine_from_env() -> Engine:
    """The engine a child process uses: a SQLite file, or PostgreSQL with a schema."""
    url = os.environ["OUTBOX_TEST_URL"]
    if url.startswith("sqlite"):
        return sqlite_engine(url.split(":///", 1)[1])
    schema = os.environ["OUTBOX_TEST_SCHEMA"]
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def set_search_path(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f'SET search_path TO "{schema}"')
        dbapi_connection.autocommit = autocommit

    return engine
