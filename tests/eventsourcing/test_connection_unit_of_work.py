"""The SQL unit of work on one connection: ORM rows and event-sourced appends share a
transaction, the ORM session exists only when used, and direct (driver-cursor) statements
behave like SQLAlchemy's own (types converted, errors translated, atomic)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Uuid,
    bindparam,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from tidings.errors import ConcurrencyError
from tidings.eventsourcing import EventSourcedRepository, EventStore, EventStoreParticipant
from tidings.persistence.direct import execute_direct
from tidings.persistence.sql import SqlUnitOfWork
from tidings.testing.store_contract import ContractAccount, fresh_id


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "uow_connection_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(String(100))


typed = Table(
    "uow_connection_typed",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("key", Uuid(), nullable=False, unique=True),
    Column("at", DateTime(timezone=True), nullable=False),
)
INSERT_TYPED = insert(typed)


@pytest.fixture
def tables(engine: Engine) -> Engine:
    Base.metadata.create_all(engine)
    typed.metadata.create_all(engine)
    return engine


def notes(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(Note.text).order_by(Note.id)).scalars())


def test_orm_rows_and_events_commit_together(tables: Engine) -> None:
    participant = EventStoreParticipant()
    uow = SqlUnitOfWork(tables, participants=[participant])
    account_id = fresh_id()
    with uow:
        uow.session.add(Note(id=1, text="opened"))
        EventSourcedRepository(uow, participant).add(ContractAccount.open(account_id, "ann"))
        uow.commit()
    assert notes(tables) == ["opened"]
    assert EventStore(tables).current_version(f"ContractAccount-{account_id}") == 1


def test_a_conflicting_append_rolls_back_the_orm_rows_too(tables: Engine) -> None:
    participant = EventStoreParticipant()
    store = EventStore(tables)
    account_id = fresh_id()
    store.save(ContractAccount.open(account_id, "ann"))
    stale = store.load(ContractAccount, account_id)
    fresh = store.load(ContractAccount, account_id)
    fresh.deposit(1)
    store.save(fresh)

    uow = SqlUnitOfWork(tables, participants=[participant])
    with uow:
        uow.session.add(Note(id=2, text="must not survive"))
        EventSourcedRepository(uow, participant).add(stale)
        stale.deposit(5)
        with pytest.raises(ConcurrencyError):
            uow.commit()
    assert notes(tables) == []
    assert stale.pending_events, "the events stay pending for a retry"


def test_a_session_created_but_never_used_does_not_lose_the_events(tables: Engine) -> None:
    participant = EventStoreParticipant()
    uow = SqlUnitOfWork(tables, participants=[participant])
    account_id = fresh_id()
    with uow:
        EventSourcedRepository(uow, participant).add(ContractAccount.open(account_id, "cy"))
        assert uow.session is not None  # e.g. a handler looked at it and wrote nothing
        uow.commit()
    assert EventStore(tables).current_version(f"ContractAccount-{account_id}") == 1


def test_a_rolled_back_unit_of_work_with_an_unused_session_writes_nothing(
    tables: Engine,
) -> None:
    uow = SqlUnitOfWork(tables)
    with uow:
        uow.connection.execute(insert(Note), {"id": 5, "text": "rolled back"})
        assert uow.session is not None
        uow.rollback()
    assert notes(tables) == []


def test_reads_through_the_connection_see_the_sessions_flushed_rows(tables: Engine) -> None:
    uow = SqlUnitOfWork(tables)
    with uow:
        uow.session.add(Note(id=3, text="flushed"))
        uow.session.flush()
        seen = uow.connection.execute(select(func.count()).select_from(Note)).scalar_one()
        assert seen == 1, "session and connection are one transaction"
        uow.rollback()
    assert notes(tables) == []


def test_add_tracks_an_unmapped_aggregate_instead_of_failing(tables: Engine) -> None:
    participant = EventStoreParticipant()
    uow = SqlUnitOfWork(tables, participants=[participant])
    account_id = fresh_id()
    with uow:
        uow.add(ContractAccount.open(account_id, "bob"))
        uow.commit()
    assert EventStore(tables).current_version(f"ContractAccount-{account_id}") == 1


def test_a_sessionmaker_is_used_for_the_session(tables: Engine) -> None:
    made: list[object] = []

    class CountingSession(sessionmaker):  # type: ignore[type-arg]
        def __call__(self, **kwargs: object) -> object:
            session = super().__call__(**kwargs)
            made.append(session)
            return session

    uow = SqlUnitOfWork(CountingSession(tables, expire_on_commit=False))
    with uow:
        uow.session.add(Note(id=4, text="via sessionmaker"))
        uow.commit()
    assert notes(tables) == ["via sessionmaker"]
    assert len(made) == 1


def test_an_unused_unit_of_work_checks_out_no_connection(tables: Engine) -> None:
    before = tables.pool.checkedout()
    uow = SqlUnitOfWork(tables)
    with uow:
        assert tables.pool.checkedout() == before
        uow.commit()
    assert tables.pool.checkedout() == before


def test_direct_statements_convert_types_like_sqlalchemy(tables: Engine) -> None:
    key = uuid.uuid4()
    at = datetime(2026, 11, 23, 12, 30, 15, 123456, tzinfo=UTC)
    with tables.begin() as conn:
        execute_direct(conn, INSERT_TYPED, {"id": 1, "key": key, "at": at}, fetch=False)
        execute_direct(
            conn,
            INSERT_TYPED,
            [
                {"id": 2, "key": uuid.uuid4(), "at": at},
                {"id": 3, "key": uuid.uuid4(), "at": at},
            ],
            fetch=False,
        )
    with tables.connect() as conn:
        row = conn.execute(select(typed.c.key, typed.c.at).where(typed.c.id == 1)).one()
        assert row.key == key
        assert row.at.replace(tzinfo=UTC) == at
        assert conn.execute(select(func.count()).select_from(typed)).scalar_one() == 3


#: Parameters given in an order unlike the statement's, values bound inside the statement (the
#: datetime, processed on SQLite, and the LIMIT), and a typed one given as None.
SELECT_MIXED = (
    select(typed.c.id)
    .where(
        typed.c.at >= datetime(2026, 1, 1, tzinfo=UTC),
        typed.c.id > bindparam("low"),
        (typed.c.key == bindparam("key")) | (bindparam("key") == None),  # noqa: E711
        typed.c.id < bindparam("high"),
    )
    .order_by(typed.c.id)
    .limit(2)
)


def test_direct_statements_bind_given_and_embedded_values_in_place(tables: Engine) -> None:
    at = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    keys = [uuid.uuid4() for _ in range(5)]
    with tables.begin() as conn:
        rows = [{"id": n, "key": key, "at": at} for n, key in enumerate(keys, start=1)]
        execute_direct(conn, INSERT_TYPED, rows, fetch=False)
    with tables.connect() as conn:
        given = {"high": 5, "key": None, "low": 1}
        assert [row[0] for row in execute_direct(conn, SELECT_MIXED, given)] == [2, 3]
        given = {"high": 9, "key": keys[3], "low": 0}
        assert [row[0] for row in execute_direct(conn, SELECT_MIXED, given)] == [4]
        assert [row[0] for row in conn.execute(SELECT_MIXED, given)] == [4], "as SQLAlchemy"


def test_direct_errors_are_sqlalchemy_errors_and_the_batch_is_atomic(tables: Engine) -> None:
    key = uuid.uuid4()
    at = datetime.now(UTC)
    with tables.begin() as conn:
        execute_direct(conn, INSERT_TYPED, {"id": 10, "key": key, "at": at}, fetch=False)
    with pytest.raises(IntegrityError) as caught, tables.begin() as conn:
        execute_direct(
            conn,
            INSERT_TYPED,
            [{"id": 11, "key": uuid.uuid4(), "at": at}, {"id": 12, "key": key, "at": at}],
            fetch=False,
        )
    assert "uow_connection_typed" in str(caught.value.statement)
    with tables.connect() as conn:
        ids = sorted(conn.execute(select(typed.c.id)).scalars())
    assert ids == [10], "the failed batch left nothing behind"


def test_a_sessionmaker_with_several_binds_still_commits_and_loads(tables: Engine) -> None:
    participant = EventStoreParticipant()
    sessions = sessionmaker(
        binds={participant.schema.events: tables, Note: tables}, expire_on_commit=False
    )
    uow = SqlUnitOfWork(sessions, participants=[participant])
    assert uow.engine is None
    account_id = fresh_id()
    with uow:
        EventSourcedRepository(uow, participant).add(ContractAccount.open(account_id, "di"))
        uow.session.add(Note(id=6, text="multi-bind"))
        uow.commit()
    with uow:
        account = EventSourcedRepository(uow, participant).load(ContractAccount, account_id)
        account.deposit(4)
        uow.commit()
    assert EventStore(tables).current_version(f"ContractAccount-{account_id}") == 2
    assert notes(tables) == ["multi-bind"]


def test_a_direct_insert_missing_a_python_side_default_is_refused(tables: Engine) -> None:
    defaulted = Table(
        "uow_connection_defaulted",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("label", String(20), nullable=True, default="from python"),
    )
    defaulted.create(tables)
    with pytest.raises(ValueError, match="label"), tables.begin() as conn:
        execute_direct(conn, insert(defaulted), {"id": 1}, fetch=False)
    with tables.connect() as conn:
        assert conn.execute(select(func.count()).select_from(defaulted)).scalar_one() == 0
