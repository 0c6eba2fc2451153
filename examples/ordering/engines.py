"""Engines from URLs: SQLite files get tidings' SQLite settings, anything else is plain."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

from tidings.persistence.sqlite import sqlite_engine


def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        return sqlite_engine(path)
    return create_engine(url, pool_size=10, max_overflow=10)
