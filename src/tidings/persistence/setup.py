"""Creating tidings' tables: every set, or the ones an application uses.

For development and tests; in production, include the same ``MetaData`` objects in your Alembic
migrations (see each module's docstring for the PostgreSQL ``tx`` default the log tables need).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import Engine, MetaData

from tidings.errors import ConfigurationError


def _outbox() -> MetaData:
    from tidings.outbox.tables import metadata

    return metadata


def _eventstore() -> MetaData:
    from tidings.eventsourcing.tables import default_schema

    return default_schema.metadata


def _sagas() -> MetaData:
    from tidings.sagas.tables import saga_metadata

    return saga_metadata


def _inbox() -> MetaData:
    from tidings.brokers.inbox import inbox_metadata

    return inbox_metadata


def _keys() -> MetaData:
    # Imported only when asked for: field protection needs the optional `crypto` extra.
    from tidings.integration.protection import key_metadata

    return key_metadata


TABLE_SETS: dict[str, Callable[[], MetaData]] = {
    "outbox": _outbox,
    "eventstore": _eventstore,
    "sagas": _sagas,
    "inbox": _inbox,
    "keys": _keys,
}


def create_tables(engine: Engine, parts: Iterable[str] | None = None) -> list[str]:
    """Create the named table sets (default: all) that do not exist yet; returns their names."""
    chosen = list(parts) if parts is not None else list(TABLE_SETS)
    unknown = [part for part in chosen if part not in TABLE_SETS]
    if unknown:
        raise ConfigurationError(
            f"unknown table set(s) {unknown}; choose from {sorted(TABLE_SETS)}"
        )
    for part in chosen:
        TABLE_SETS[part]().create_all(engine, checkfirst=True)
    return chosen
