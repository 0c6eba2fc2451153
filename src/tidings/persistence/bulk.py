"""Bulk inserts with PostgreSQL's ``COPY``, for the inserts that carry many rows per commit.

psycopg's ``executemany`` (pipeline mode) handles every row in Python: measured here, about
35 microseconds of CPU per row even for a one-column statement. ``COPY ... FROM STDIN (FORMAT
BINARY)`` encodes each row in psycopg's C extension: about 6 microseconds per row for the
outbox's twelve columns, and fewer bytes on the wire. From two rows up it was cheaper in both
CPU and wall time (100 rows: 3.7 ms of CPU down to 0.6 ms).

``COPY`` inserts exactly what ``INSERT INTO t (columns) VALUES (...)`` would: omitted columns
take their defaults (the log's sequence and transaction id), constraints and row triggers apply,
and a violation raises the same error (unique, foreign key), so callers translate it as before.
It cannot evaluate SQL expressions as values, and binary ``COPY`` must be told each column's
type, so a statement qualifies only when it is a plain ``INSERT`` of bound values into columns
of the types in :data:`_COPY_TYPES`. Statements opt in with :func:`bulk_insert`. Each batch's
values are checked first against what the binary dumpers send as the INSERT would (``UUID``
objects for ``uuid``, aware datetimes for ``timestamptz``, integers in the column's range); a
batch with any other value keeps ``executemany``, and so its old result or error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any
from uuid import UUID

from sqlalchemy import LargeBinary
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Insert
from sqlalchemy.sql.base import Executable

#: A column type's bind processor (``TypeEngine.bind_processor``).
Processor = Callable[[Any], Any]

#: The execution option that marks an INSERT as bulk-loadable (see :func:`bulk_insert`).
OPTION = "tidings_bulk_copy"

#: The column types binary COPY is used for, as the PostgreSQL dialect compiles them (without
#: a length), and psycopg's names for them. Anything else keeps ``executemany``.
_COPY_TYPES = {
    "UUID": "uuid",
    "VARCHAR": "varchar",
    "TEXT": "text",
    "SMALLINT": "int2",
    "INTEGER": "int4",
    "BIGINT": "int8",
    "BOOLEAN": "bool",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "TIMESTAMP WITHOUT TIME ZONE": "timestamp",
    "TIMESTAMP": "timestamp",
    "BYTEA": "bytea",
    "DOUBLE PRECISION": "float8",
}


def _integer(bits: int) -> Callable[[Any], bool]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return lambda value: (
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    )


#: What each COPY type's binary dumper takes as the INSERT would send it (NULLs aside).
_ACCEPTS: dict[str, Callable[[Any], bool]] = {
    "uuid": lambda value: isinstance(value, UUID),
    "varchar": lambda value: isinstance(value, str),
    "text": lambda value: isinstance(value, str),
    "int2": _integer(16),
    "int4": _integer(32),
    "int8": _integer(64),
    "bool": lambda value: isinstance(value, bool),
    "timestamptz": lambda value: isinstance(value, datetime) and value.tzinfo is not None,
    "timestamp": lambda value: isinstance(value, datetime) and value.tzinfo is None,
    "bytea": lambda value: isinstance(value, bytes | bytearray | memoryview),
    "float8": lambda value: isinstance(value, float | int) and not isinstance(value, bool),
}

#: One value of the VALUES list as the dialect renders it: a named placeholder, perhaps cast.
_PLACEHOLDER = re.compile(r"%\((\w+)\)s(?:::[A-Z][A-Z ]*)?")


def bulk_insert(statement: Insert) -> Insert:
    """Mark ``statement`` (an ``insert(table)``) so that the direct shell may run it with several
    rows as a binary ``COPY`` on PostgreSQL with psycopg (see the module docstring)."""
    return statement.execution_options(**{OPTION: True})


@dataclass(frozen=True, slots=True)
class CopyForm:
    """How to run one INSERT (for one set of parameter names) as a ``COPY``."""

    sql: str
    #: psycopg type names, one per copied column.
    types: tuple[str, ...]
    #: Picks a row's values in column order from its parameter mapping.
    values: itemgetter[Any]
    #: Bind processors by column position (a Boolean's check, say), applied as the INSERT would.
    processors: tuple[tuple[int, Processor], ...]
    #: Per column: whether a value is one the binary dumper sends as the INSERT would.
    checks: tuple[Callable[[Any], bool], ...]

    def rows(self, params: Sequence[Mapping[str, Any]]) -> list[Any] | None:
        """The rows' values in column order, or None if one of them is of a Python type that
        binary COPY would not send as the INSERT does (a UUID given as text, a naive datetime
        for a timestamptz, an integer out of the column's range): such a batch keeps
        ``executemany``, and so the same result or error as before."""
        pick = self.values
        if len(self.types) == 1:
            picked: list[Any] = [(pick(row),) for row in params]  # one key: the bare value
        else:
            picked = [pick(row) for row in params]
        if self.processors:
            converted = []
            for values in picked:
                row = list(values)
                for index, processor in self.processors:
                    if row[index] is not None:
                        row[index] = processor(row[index])
                converted.append(row)
            picked = converted
        checks = tuple(enumerate(self.checks))
        for values in picked:
            for index, check in checks:
                value = values[index]
                if value is not None and not check(value):
                    return None
        return picked


def copy_form(
    statement: Executable, compiled_sql: str, dialect: Dialect, keys: tuple[str, ...]
) -> CopyForm | None:
    """The ``COPY`` equivalent of ``statement`` run with parameters ``keys``, or None if it did
    not opt in or is not a plain insert of bound values into columns of known types."""
    if not isinstance(statement, Insert) or not keys:
        return None
    if not statement.get_execution_options().get(OPTION):
        return None
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        return None
    table = statement.table
    preparer = dialect.identifier_preparer
    try:
        columns = [table.c[key] for key in keys]
    except KeyError:
        return None
    target = preparer.format_table(table)
    names = ", ".join(preparer.format_column(column) for column in columns)
    # The rendered statement must be exactly the plain form (no RETURNING, ON CONFLICT, SQL
    # expressions or values bound inside the statement), with one placeholder per given key.
    head = f"INSERT INTO {target} ({names}) VALUES ("
    if not compiled_sql.startswith(head) or not compiled_sql.endswith(")"):
        return None
    placeholders = compiled_sql[len(head) : -1].split(", ")
    given = []
    for placeholder in placeholders:
        match = _PLACEHOLDER.fullmatch(placeholder)
        if match is None:
            return None
        given.append(match.group(1))
    if given != list(keys):
        return None
    types = []
    processors = []
    checks: list[Callable[[Any], bool]] = []
    for index, column in enumerate(columns):
        rendered = re.sub(r"\(.*\)", "", column.type.compile(dialect=dialect)).strip()
        copy_type = _COPY_TYPES.get(rendered)
        if copy_type is None:
            return None
        types.append(copy_type)
        checks.append(_ACCEPTS[copy_type])
        # Bytes need no wrapping for the binary dumper (the processor wraps them for the
        # DB-API); any other processor converts or checks values, and runs here too.
        processor = column.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None and not isinstance(column.type, LargeBinary):
            processors.append((index, processor))
    return CopyForm(
        sql=f"COPY {target} ({names}) FROM STDIN (FORMAT BINARY)",
        types=tuple(types),
        values=itemgetter(*keys),
        processors=tuple(processors),
        checks=tuple(checks),
    )


def run_copy(cursor: Any, form: CopyForm, rows: Sequence[Any]) -> None:
    """Send ``rows`` (tuples in the form's column order) through ``COPY`` on a psycopg cursor."""
    with cursor.copy(form.sql) as copy:
        copy.set_types(list(form.types))
        write = copy.write_row
        for row in rows:
            write(row)


async def run_copy_async(cursor: Any, form: CopyForm, rows: Sequence[Any]) -> None:
    """:func:`run_copy` on a psycopg ``AsyncCursor``."""
    async with cursor.copy(form.sql) as copy:
        copy.set_types(list(form.types))
        write = copy.write_row
        for row in rows:
            await write(row)
