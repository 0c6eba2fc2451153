"""The events table is a log table the outbox relay can follow, and the public API is curated."""

from __future__ import annotations

from sqlalchemy import Engine, LargeBinary, MetaData, Text, inspect

import tidings.eventsourcing as eventsourcing
from tidings.core.messages import METADATA_FIELDS
from tidings.eventsourcing import EventStoreSchema, default_schema


def test_events_table_has_the_shared_log_columns() -> None:
    columns = default_schema.events.c
    assert {"position", "tx", *METADATA_FIELDS, "headers", "payload"} <= set(columns.keys())
    assert isinstance(columns.headers.type, Text)
    assert isinstance(columns.payload.type, LargeBinary)


def test_tables_can_share_an_application_metadata_under_a_prefix(engine: Engine) -> None:
    metadata = MetaData()
    schema = EventStoreSchema(metadata, prefix="shop_")
    assert set(metadata.tables) == {"shop_events", "shop_snapshots", "shop_projections"}
    schema.create_all(engine)
    names = set(inspect(engine).get_table_names())
    assert {"shop_events", "shop_snapshots", "shop_projections"} <= names


def test_public_api_resolves() -> None:
    for name in eventsourcing.__all__:
        assert getattr(eventsourcing, name) is not None, name
