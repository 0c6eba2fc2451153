"""Which inserts qualify for binary COPY (tidings.persistence.bulk), decided without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import JSON, Boolean, Column, DateTime, Integer, MetaData, String, Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Insert

from tidings.persistence.bulk import CopyForm, bulk_insert, copy_form

PSYCOPG = postgresql.psycopg.dialect()  # type: ignore[attr-defined]

plain = Table(
    "bulk_plain",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("name", String(20), nullable=True),
    Column("flag", Boolean, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    schema="sales",
)
with_json = Table("bulk_json", MetaData(), Column("id", Integer), Column("doc", JSON))
KEYS = ("name", "flag", "at")


def form(statement: Insert, dialect: Dialect = PSYCOPG, keys: tuple[str, ...] = KEYS) -> Any:
    sql = statement.compile(dialect=dialect, column_keys=list(keys), for_executemany=True)
    return copy_form(statement, sql.string, dialect, keys)


def test_a_marked_plain_insert_becomes_a_binary_copy_of_its_columns() -> None:
    found = form(bulk_insert(insert(plain)))
    assert isinstance(found, CopyForm)
    assert found.sql == "COPY sales.bulk_plain (name, flag, at) FROM STDIN (FORMAT BINARY)"
    assert found.types == ("varchar", "bool", "timestamptz")
    at = datetime(2026, 11, 24, tzinfo=UTC)
    rows = found.rows([{"at": at, "flag": True, "name": None}, {"name": "b", "flag": 0, "at": at}])
    assert [tuple(row) for row in rows] == [(None, True, at), ("b", False, at)]


@pytest.mark.parametrize(
    ("statement", "keys"),
    [
        (insert(plain), KEYS),  # not marked
        (bulk_insert(insert(plain).returning(plain.c.id)), KEYS),
        (bulk_insert(pg_insert(plain).on_conflict_do_nothing()), KEYS),
        (bulk_insert(insert(plain).values(flag=True)), ("name", "at")),  # a value inside
        (bulk_insert(insert(with_json)), ("id", "doc")),  # a type COPY is not told about
    ],
    ids=["unmarked", "returning", "on-conflict", "embedded-value", "json-column"],
)
def test_anything_but_a_marked_plain_insert_of_known_types_keeps_executemany(
    statement: Insert, keys: tuple[str, ...]
) -> None:
    assert form(statement, keys=keys) is None


def test_other_databases_keep_executemany() -> None:
    assert form(bulk_insert(insert(plain)), dialect=sqlite.dialect()) is None
    psycopg2 = postgresql.psycopg2.dialect()  # type: ignore[attr-defined]
    assert form(bulk_insert(insert(plain)), dialect=psycopg2) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("name", uuid.uuid4()),  # not text
        ("at", datetime(2026, 11, 24)),  # no time zone
        ("flag", "yes"),  # not a bool (SQLAlchemy's own check would refuse it)
    ],
)
def test_a_batch_with_a_value_copy_would_send_differently_is_left_to_executemany(
    name: str, value: object
) -> None:
    found = form(bulk_insert(insert(plain)))
    good = {"name": "a", "flag": True, "at": datetime(2026, 11, 24, tzinfo=UTC)}
    if name == "flag":
        with pytest.raises(TypeError):
            found.rows([good, good | {name: value}])
        return
    assert found.rows([good, good | {name: value}]) is None


def test_integers_out_of_a_columns_range_are_left_to_executemany() -> None:
    found = form(bulk_insert(insert(plain)), keys=("id", "flag", "at"))
    at = datetime(2026, 11, 24, tzinfo=UTC)
    assert found.rows([{"id": 2**31 - 1, "flag": True, "at": at}]) is not None
    assert found.rows([{"id": 2**31, "flag": True, "at": at}]) is None
    assert found.rows([{"id": True, "flag": True, "at": at}]) is None
