"""Running prebuilt statements on the driver's cursor, for the hottest paths.

SQLAlchemy's ``Connection.execute`` costs tens of microseconds per call (cache key, execution
context, result set-up, events) while a small indexed read or a one-row insert costs a few in
the driver. On paths that run per command (loading a stream, appending its events) that overhead
is most of the work, so those statements run here instead:

* compiled once per (statement, dialect, parameter names) into SQL text, parameter order and
  the columns' bind processors (``TypeEngine.bind_processor``: UUIDs and datetimes on SQLite,
  for example), then executed with the DB-API cursor of the same connection, so they stay in the
  unit of work's transaction;
* only for statements built once and kept (the cache holds the statement, so a recycled
  ``id()`` can never return another statement's SQL), with parameters that need nothing but
  the bind processors: no Python-side column defaults, no SQL expressions as values;
* driver errors come back as SQLAlchemy's ``DBAPIError`` family (with the statement and its
  parameters), exactly as ``Connection.execute`` raises them, and a lost connection is
  invalidated so the pool does not hand it out again.

Several rows for an INSERT marked with :func:`tidings.persistence.bulk.bulk_insert` (the outbox's,
the event store's) go to PostgreSQL as one binary ``COPY`` instead of ``executemany``, when every
value is one ``COPY`` sends as the INSERT would (see :mod:`tidings.persistence.bulk`).

Result rows come back as the driver returns them (no result processors), so reads must select
columns whose driver values are what the caller wants (integers, strings, bytes).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.base import Executable

from tidings.persistence.bulk import CopyForm, Processor, copy_form, run_copy, run_copy_async


@dataclass(frozen=True, slots=True)
class Direct:
    """Marks a prebuilt statement to run on the driver's cursor (see the module docstring)."""

    statement: Executable


@dataclass(frozen=True, slots=True)
class _Compiled:
    statement: Executable
    sql: str
    #: Values bound inside the statement itself (a LIMIT, for instance).
    defaults: dict[str, Any]
    #: Bind processors of the parameters that have one.
    processors: dict[str, Processor]
    #: For positional paramstyles, each position's parameter name and its processor (or None),
    #: so that binding builds the tuple in one pass (None: the driver takes a mapping).
    positions: tuple[tuple[str, Processor | None], ...] | None
    #: For an INSERT marked with :func:`tidings.persistence.bulk.bulk_insert`, on psycopg: how
    #: to send several rows as one ``COPY`` instead of ``executemany``.
    copy: CopyForm | None


_compiled: dict[tuple[int, str, tuple[str, ...]], _Compiled] = {}
#: Entries kept at most: the cache is meant for a handful of long-lived statements; statements
#: built per call would only churn it (and keep their objects alive), so past this it restarts.
_MAX_COMPILED = 512


def _compile(statement: Executable, connection: Connection, keys: tuple[str, ...]) -> _Compiled:
    dialect = connection.dialect
    cache_key = (id(statement), dialect.name, keys)
    found = _compiled.get(cache_key)
    if found is not None and found.statement is statement:
        return found
    # column_keys: an INSERT lists exactly the columns given (the others take their server
    # defaults), as Connection.execute would compile it for these parameters.
    # for_executemany: no implicit RETURNING of the new primary key, which nobody reads here.
    compiled = statement.compile(  # type: ignore[attr-defined]
        dialect=dialect, column_keys=list(keys) if keys else None, for_executemany=True
    )
    # bind_names: each parameter as rendered (anonymous ones get their final names there).
    names: dict[Any, str] = compiled.bind_names
    embedded = {
        name
        for bind, name in names.items()
        if name not in keys and (bind.value is not None or bind.callable is not None)
    }
    missing = sorted(set(names.values()) - set(keys) - embedded)
    if missing:
        # Connection.execute would fill these from Python-side column defaults; this shell
        # does not, so such a statement needs every value given.
        raise ValueError(
            f"direct statement needs values for {missing} (Python-side column defaults are "
            f"not applied on the driver cursor): {compiled.string}"
        )
    processors: dict[str, Processor] = {}
    for bind, name in names.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    order = tuple(compiled.positiontup) if compiled.positiontup is not None else None
    # Values bound in the statement itself go through their processors once, here.
    params = compiled.params
    defaults = {
        name: processors[name](params[name]) if name in processors else params[name]
        for name in embedded
    }
    if len(_compiled) >= _MAX_COMPILED:
        _compiled.clear()
    positions = tuple((name, processors.get(name)) for name in order) if order is not None else None
    copy = copy_form(statement, compiled.string, dialect, keys)
    found = _compiled[cache_key] = _Compiled(
        statement, compiled.string, defaults, processors, positions, copy
    )
    return found


def _bound(compiled: _Compiled, params: Mapping[str, Any]) -> Any:
    positions = compiled.positions
    if positions is not None:
        # Values bound in the statement win over (and were processed before) given ones.
        defaults = compiled.defaults
        bound = []
        for name, processor in positions:
            if name in defaults:
                bound.append(defaults[name])
                continue
            value = params[name]
            bound.append(value if processor is None or value is None else processor(value))
        return tuple(bound)
    values = dict(params)
    for name, processor in compiled.processors.items():
        value = values.get(name)
        if value is not None:
            values[name] = processor(value)
    if compiled.defaults:
        values.update(compiled.defaults)
    return values  # a named paramstyle: the driver takes the mapping


def execute_direct(
    connection: Connection,
    statement: Executable,
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    *,
    fetch: bool = True,
    autocommit: bool = False,
) -> list[Any]:
    """Run ``statement`` with ``params`` (one mapping, or a list for executemany) on
    ``connection``'s driver cursor, in its transaction; returns the rows (if ``fetch``).

    With ``autocommit``, a connection that has no transaction open runs a statement with one
    set of parameters as a transaction of its own (see :func:`can_autocommit`) instead of
    beginning one: no ``BEGIN`` and ``COMMIT`` round trips. Only for a statement that is the
    whole of its transaction. Several sets of parameters (executemany) always run in a
    transaction: on their own each row would be a transaction, and the batch not atomic.
    """
    rows: Sequence[Mapping[str, Any]] = params if isinstance(params, Sequence) else [params or {}]
    standalone = (
        autocommit
        and len(rows) == 1
        and not connection.in_transaction()
        and can_autocommit(connection)
    )
    if not standalone and not connection.in_transaction():
        connection.begin()
    if not rows:
        return []
    # One row goes through execute(): psycopg runs executemany() in pipeline mode, which
    # costs extra round trips for a single statement.
    many = len(rows) > 1
    compiled = _compile(statement, connection, tuple(rows[0]))
    if many and compiled.copy is not None:
        values = compiled.copy.rows(rows)
        if values is not None:
            _copy(connection, compiled.copy, values)
            return []
    bound: Any = [_bound(compiled, row) for row in rows] if many else _bound(compiled, rows[0])
    driver = connection.connection.dbapi_connection
    switch = standalone and getattr(driver, "autocommit", True) is False
    if switch:
        driver.autocommit = True  # type: ignore[union-attr]
    cursor = connection.connection.cursor()
    try:
        if many:
            cursor.executemany(compiled.sql, bound)
            return []
        cursor.execute(compiled.sql, bound)
        return list(cursor.fetchall()) if fetch else []
    except connection.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(connection, compiled.sql, bound, exc, cursor) from exc
    finally:
        cursor.close()
        if switch and not connection.invalidated:
            driver.autocommit = False  # type: ignore[union-attr]


def _copy(connection: Connection, form: CopyForm, values: list[Any]) -> None:
    cursor = connection.connection.cursor()
    try:
        run_copy(cursor, form, values)
    except connection.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(connection, form.sql, values, exc, cursor) from exc
    finally:
        cursor.close()


async def copy_direct_async(
    target: AsyncConnection | AsyncSession, statement: Executable, params: Any
) -> bool:
    """On asyncio: run an INSERT with several rows as one ``COPY`` when it qualifies (see
    :mod:`tidings.persistence.bulk`), in ``target``'s transaction; False if it does not
    (the caller then executes it the usual way)."""
    if not isinstance(params, Sequence) or len(params) < 2:
        return False  # before asking a session for its connection: one-row inserts are common
    connection = (
        # Several binds: the connection of this statement's table.
        await target.connection(bind_arguments={"clause": statement})
        if isinstance(target, AsyncSession)
        else target
    )
    sync = connection.sync_connection
    assert sync is not None
    form = _compile(statement, sync, tuple(params[0])).copy
    values = form.rows(params) if form is not None else None
    if form is None or values is None:
        return False
    raw = await connection.get_raw_connection()
    cursor = raw.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        await run_copy_async(cursor, form, values)
    except sync.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(sync, form.sql, values, exc, cursor) from exc
    finally:
        await cursor.close()
    return True


def update_direct(connection: Connection, statement: Executable, params: Mapping[str, Any]) -> int:
    """Run an UPDATE or DELETE with one set of parameters on ``connection``'s driver cursor, in
    its transaction; returns how many rows it changed.

    On psycopg, when the driver has no transaction open yet, the statement goes out in pipeline
    mode together with the ``BEGIN`` the driver sends first: one round trip instead of two.
    """
    pipelined = _begins_in_pipeline(connection)
    if not connection.in_transaction():
        connection.begin()
    compiled = _compile(statement, connection, tuple(params))
    bound = _bound(compiled, params)
    driver: Any = connection.connection.dbapi_connection
    cursor = connection.connection.cursor()
    try:
        if pipelined:
            with driver.pipeline():
                cursor.execute(compiled.sql, bound)
        else:
            cursor.execute(compiled.sql, bound)
        return int(cursor.rowcount)
    except connection.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(connection, compiled.sql, bound, exc, cursor) from exc
    finally:
        cursor.close()


def _begins_in_pipeline(connection: Connection) -> bool:
    """Whether ``connection`` is psycopg's with no transaction open at the driver, on a libpq
    with pipeline mode, so that its ``BEGIN`` can travel with the next statement."""
    if connection.dialect.name != "postgresql" or connection.dialect.driver != "psycopg":
        return False
    driver: Any = connection.connection.dbapi_connection
    return bool(driver.info.transaction_status == _PSYCOPG_IDLE) and _pipeline_supported()


# psycopg.pq.TransactionStatus.IDLE, without importing psycopg where it is not installed.
_PSYCOPG_IDLE = 0


@functools.cache
def _pipeline_supported() -> bool:
    """psycopg's pipeline mode needs libpq 14 or later."""
    import psycopg

    return bool(psycopg.Pipeline.is_supported())


def can_autocommit(connection: Connection) -> bool:
    """Whether a statement can run on ``connection``'s driver as a transaction of its own:
    psycopg (its ``autocommit`` switch is client-side, no round trip) and SQLite connections
    whose driver leaves transactions to the caller (``isolation_level = None``, as
    :func:`tidings.persistence.sqlite.sqlite_engine` sets it; a driver in its default mode
    would open a transaction implicitly and leave it open)."""
    name = connection.dialect.name
    if name == "postgresql":
        return connection.dialect.driver == "psycopg"
    if name == "sqlite":
        driver = connection.connection.dbapi_connection
        return getattr(driver, "isolation_level", "") is None
    return False


def _wrapped(connection: Connection, sql: str, params: Any, error: Any, cursor: Any) -> Exception:
    dialect = connection.dialect
    disconnected = dialect.is_disconnect(error, connection.connection.dbapi_connection, cursor)
    if disconnected:
        connection.invalidate(error)
    wrapped: Exception = DBAPIError.instance(
        sql,
        params,
        error,
        dialect.loaded_dbapi.Error,
        connection_invalidated=disconnected,
        dialect=dialect,
    )
    return wrapped
