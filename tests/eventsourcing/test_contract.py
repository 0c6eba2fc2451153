"""tidings' own stores pass the shipped event-store contract, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine

from tidings.eventsourcing import EventStore
from tidings.testing.store_contract import EventStoreContract


class TestSqlEventStore(EventStoreContract):
    @pytest.fixture
    def event_store(self, engine: Engine) -> EventStore:
        # No aggregate cache: loads must read what is stored (the cache has its own tests).
        return EventStore(engine, cache=None)

    @pytest.fixture
    def store_opener(self, opener: Any) -> Callable[[], Any]:
        return opener  # type: ignore[no-any-return]
