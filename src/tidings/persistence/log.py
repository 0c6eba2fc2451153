"""The gap-safe ordered log: shared by the outbox and the event store.

Both are append-only tables read in order by followers (the relay, subscribers, projections).
The hard part is *gap safety* on PostgreSQL: sequence values are taken when a row is inserted,
but transactions commit in any order, so a follower that reads "everything after position 41"
may see 43 while 42 is still uncommitted, move its checkpoint past 42, and never see it.

The fence used here is commit-order visibility by transaction id, not a timeout guess:

* every row stores ``tx``, the 64-bit id of the transaction that wrote it
  (``pg_current_xact_id()``, never wraps around);
* a follower reads only rows with ``tx < pg_snapshot_xmin(pg_current_snapshot())``: every
  transaction older than the snapshot's xmin has finished, so no row can later appear there;
* rows are ordered, and checkpoints kept, by ``(tx, position)``. A late-committing transaction
  has a ``tx`` at or above the fence until it commits, so it is read after it commits, never
  skipped.

On SQLite writers are serialized (``BEGIN IMMEDIATE``), so positions commit in order; ``tx`` is
always 0 and the order is simply ``position``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import (
    DDL,
    BigInteger,
    Column,
    ColumnElement,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    event,
    literal,
    literal_column,
    or_,
    select,
)


class Checkpoint(NamedTuple):
    """A follower's place in a log: the last ``(tx, position)`` it has processed."""

    tx: int
    position: int

    def __str__(self) -> str:
        return f"{self.tx}.{self.position}"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse ``"tx.position"`` (or a bare ``position`` on stores where tx is always 0)."""
        try:
            if "." in text:
                tx, position = text.split(".", 1)
                return cls(int(tx), int(position))
            return cls(0, int(text))
        except ValueError:
            raise ValueError(f"not a log checkpoint: {text!r} (expected 'tx.position')") from None


START = Checkpoint(0, 0)

PG_CURRENT_TX = "pg_current_xact_id()::text::bigint"
PG_VISIBLE_FENCE = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


def log_columns() -> list[Column[Any]]:
    """The two ordering columns every log table has: ``position`` and ``tx``."""
    return [
        Column(
            "position",
            BigInteger().with_variant(Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column("tx", BigInteger(), nullable=False, server_default="0", index=False),
    ]


def install_tx_default(table: Table) -> None:
    """On PostgreSQL, make ``tx`` default to the writing transaction's id (at table creation).

    Users who manage tables with Alembic must add the same default; see the README.
    """
    event.listen(
        table,
        "after_create",
        DDL(  # type: ignore[no-untyped-call]
            f"ALTER TABLE %(fullname)s ALTER COLUMN tx SET DEFAULT {PG_CURRENT_TX}"
        ).execute_if(dialect="postgresql"),
    )


def after(
    table: Table, checkpoint: Checkpoint, dialect_name: str | None = None
) -> ColumnElement[bool]:
    """Rows strictly after ``checkpoint`` in log order (see :func:`log_order`; without
    ``dialect_name``, the condition every dialect agrees on, for counts)."""
    return _after(
        table,
        literal(checkpoint.tx, BigInteger),
        literal(checkpoint.position, BigInteger),
        dialect_name,
    )


def after_bound(table: Table, dialect_name: str | None = None) -> ColumnElement[bool]:
    """Rows after the checkpoint bound as ``after_tx`` / ``after_position`` (prebuilt reads)."""
    return _after(
        table,
        bindparam("after_tx", type_=BigInteger),
        bindparam("after_position", type_=BigInteger),
        dialect_name,
    )


def log_order(table: Table, dialect_name: str) -> tuple[ColumnElement[Any], ...]:
    """The columns a page of the log is ordered by: ``(tx, position)``, and on SQLite, where
    ``tx`` is always 0, ``position`` alone (the same order), so that a read after a checkpoint
    seeks in the primary key."""
    if dialect_name == "sqlite":
        return (table.c.position,)
    return (table.c.tx, table.c.position)


def _after(
    table: Table,
    after_tx: ColumnElement[int],
    after_position: ColumnElement[int],
    dialect_name: str | None,
) -> ColumnElement[bool]:
    tx, position = table.c.tx, table.c.position
    if dialect_name == "sqlite":
        # Writers commit one at a time in position order and tx is always 0 (module
        # docstring): position alone decides. SQLite could not seek on the position inside
        # the (tx, position) condition: it walked the index from the start of the
        # checkpoint's tx, every row before the checkpoint on every read (about 9 ms a page
        # past 190,000 outbox rows, against 0.5 at the start).
        return position > after_position
    # ``tx >= after_tx`` is implied by the rest, and is there for the index on (tx, position):
    # without it PostgreSQL bounded the index scan by the fence alone and filtered out, on every
    # read, each row before the checkpoint still in the table (delivered rows kept until
    # retention purges them), so a page read cost more the more rows had been delivered
    # (about 1.9 ms instead of 0.25 for 1,000 rows past 20,000 delivered ones).
    return and_(
        tx >= after_tx,
        or_(tx > after_tx, and_(tx == after_tx, position > after_position)),
    )


def visible(table: Table, dialect_name: str) -> ColumnElement[bool] | None:
    """The commit-order fence for this dialect (None where writers commit in order)."""
    if dialect_name == "postgresql":
        return table.c.tx < literal_column(PG_VISIBLE_FENCE)
    return None


def committed_after_bound(table: Table, dialect_name: str) -> ColumnElement[bool]:
    """:func:`after_bound` behind the commit-order fence: the gap-safe condition of a prebuilt
    read of the log (a relay's page, an event store's page)."""
    return _behind_fence(table, after_bound(table, dialect_name), dialect_name)


def read_after(
    table: Table, checkpoint: Checkpoint, dialect_name: str, *, limit: int
) -> Select[Any]:
    """Select up to ``limit`` committed rows after ``checkpoint``, gap-safe, in log order."""
    condition = _behind_fence(table, after(table, checkpoint, dialect_name), dialect_name)
    return select(table).where(condition).order_by(*log_order(table, dialect_name)).limit(limit)


def _behind_fence(
    table: Table, condition: ColumnElement[bool], dialect_name: str
) -> ColumnElement[bool]:
    fence = visible(table, dialect_name)
    return condition if fence is None else and_(condition, fence)
