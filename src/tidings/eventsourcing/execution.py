"""Sans-I/O plans and the two thin shells that run them.

Every store operation (append, read a stream, load an aggregate, read the log) is written once,
as a *plan*: a generator that yields :class:`Query` objects and receives each query's rows back.
It decides what to ask and what the answers mean; it never touches a connection. The synchronous
shell (:func:`run`) and the asyncio shell (:func:`run_async`) only execute what the plan yields,
so both APIs share every rule and every error message.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import Executable

from tidings.errors import ConcurrencyError, StoreError, TidingsError
from tidings.persistence.direct import copy_direct_async, execute_direct

T = TypeVar("T")

Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


@dataclass(frozen=True, slots=True)
class Query:
    """One statement for the shell to execute; rows are sent back unless ``fetch`` is false."""

    statement: Executable
    params: Params = None
    fetch: bool = True
    #: For appends: ``(stream_id, expected_version)``, so a constraint violation is reported
    #: as the :class:`ConcurrencyError` it means.
    conflict: tuple[str, int] | None = None
    #: A prebuilt statement whose result columns need no conversion (ints, strings, bytes):
    #: the synchronous shell runs it on the driver's cursor
    #: (:func:`tidings.persistence.direct.execute_direct`), skipping SQLAlchemy's
    #: per-execution overhead on the hot paths (loads, appends).
    direct: bool = False


#: A plan yields queries, receives their rows, and returns its result.
Plan = Generator[Query, Sequence[Any], T]


def run(target: Connection | Session, plan: Plan[T], *, autocommit: bool = False) -> T:
    """Run ``plan`` on a synchronous connection or session (inside its current transaction).

    With ``autocommit``, on a connection with no transaction open, the plan's direct queries
    run as statements of their own instead of beginning one (for reads that need no
    transaction: the stored events never change).
    """
    query: Query | None = None
    connection = target.connection() if isinstance(target, Session) else target
    try:
        query = next(plan)
        while True:
            if query.direct:
                rows = execute_direct(
                    connection,
                    query.statement,
                    query.params,
                    fetch=query.fetch,
                    autocommit=autocommit,
                )
                query = plan.send(rows)
                continue
            result = connection.execute(query.statement, query.params)
            query = plan.send(result.all() if query.fetch else ())
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    except TidingsError:
        raise
    except SQLAlchemyError as exc:
        raise translate(exc, query) from exc
    except connection.dialect.loaded_dbapi.Error as exc:
        raise StoreError(f"event store database error: {exc}") from exc


async def run_async(target: AsyncConnection | AsyncSession, plan: Plan[T]) -> T:
    """Run ``plan`` on an asyncio connection or session."""
    query: Query | None = None
    try:
        query = next(plan)
        while True:
            # Several rows of a bulk insert go in as one COPY on PostgreSQL.
            if (
                query.direct
                and not query.fetch
                and await copy_direct_async(target, query.statement, query.params)
            ):
                query = plan.send(())
                continue
            result = await target.execute(query.statement, query.params)
            query = plan.send(result.all() if query.fetch else ())
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    except TidingsError:
        raise
    except SQLAlchemyError as exc:
        raise translate(exc, query) from exc


def conflict_error(error: IntegrityError, stream_id: str, expected_version: int) -> TidingsError:
    """What a constraint violation while appending to ``stream_id`` means."""
    if "event_id" in str(error.orig):
        return StoreError(
            f"an event with the same event_id is already stored (appending to {stream_id!r}): "
            "the same events were appended twice; nothing was written"
        )
    message = str(error.orig).lower()
    behind = "foreign key" in message or "_no_gaps" in message
    return ConcurrencyError(stream_id, expected_version, None, behind=behind)


def _param_values(params: Any) -> list[Any]:
    if isinstance(params, Mapping):
        return list(params.values())
    if isinstance(params, (list, tuple)) and params:
        if isinstance(params[0], Mapping):
            return list(params[0].values())
        if isinstance(params[0], (list, tuple)):
            return list(params[0])
        return list(params)
    return []


def conflict_among(
    error: DBAPIError, events_table: str, appends: Sequence[tuple[str, int]]
) -> TidingsError | None:
    """Translate a violation of the events table's constraints raised by one of ``appends``
    (``(stream_id, expected_version)`` pairs, one insert statement each)."""
    if not isinstance(error, IntegrityError) or events_table not in str(error.statement or ""):
        return None
    # Each statement inserts one stream's events, so its parameters name exactly one stream.
    values = _param_values(error.params)
    for stream_id, expected in appends:
        if stream_id in values:
            return conflict_error(error, stream_id, expected)
    if len(appends) == 1:
        return conflict_error(error, *appends[0])
    return None


def translate(error: SQLAlchemyError, query: Query | None) -> TidingsError:
    if isinstance(error, IntegrityError) and query is not None and query.conflict is not None:
        return conflict_error(error, *query.conflict)
    return StoreError(f"event store database error: {error}")
