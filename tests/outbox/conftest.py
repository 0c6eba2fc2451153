"""Fixtures for the outbox contract: the same tests on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine

from tidings.testing.services import POSTGRES_URL

from .app import prepare


@dataclass(frozen=True)
class Store:
    """A prepared database, and how a child process or the CLI reaches the same one."""

    name: str
    engine: Engine
    url: str
    env: dict[str, str]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        engine: Engine = request.getfixturevalue("sqlite_sync_engine")
        path = request.getfixturevalue("sqlite_path")
        url = f"sqlite:///{path}"
        env = {"OUTBOX_TEST_URL": url}
    else:
        engine = request.getfixturevalue("pg_engine")
        schema = request.getfixturevalue("pg_schema")
        url = f"{POSTGRES_URL}?options={quote(f'-csearch_path={schema}')}"
        env = {"OUTBOX_TEST_URL": POSTGRES_URL, "OUTBOX_TEST_SCHEMA": schema}
    prepare(engine)
    return Store(request.param, engine, url, {**os.environ, **env})


@pytest.fixture
def pg_store(request: pytest.FixtureRequest) -> Store:
    engine: Engine = request.getfixturevalue("pg_engine")
    schema = request.getfixturevalue("pg_schema")
    prepare(engine)
    url = f"{POSTGRES_URL}?options={quote(f'-csearch_path={schema}')}"
    env = {"OUTBOX_TEST_URL": POSTGRES_URL, "OUTBOX_TEST_SCHEMA": schema}
    return Store("postgres", engine, url, {**os.environ, **env})
