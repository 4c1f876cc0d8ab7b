"""SQL databases for the persistence tests: a SQLite file and a fresh PostgreSQL database.

`database_url` runs a test on both, migrated with the real migrations (a copy of a database
the process migrated once: tests/conftest.py); `empty_database_url` is not migrated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.history.engine import make_engine, make_session_factory
from service.state.keys import KeySpace
from service.state.store import Core
from tests.conftest import MigratedSqlite

BUCKETS = 16


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'history.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        migrated_sqlite: MigratedSqlite = request.getfixturevalue("migrated_sqlite")
        return migrated_sqlite(f"sqlite:///{tmp_path / 'history.db'}")
    url: str = request.getfixturevalue("migrated_postgres_url")
    return url


@asynccontextmanager
async def sessions_on(url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the (migrated) database of `url`."""
    engine = make_engine(url)
    try:
        yield make_session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sessions_on(database_url) as factory:
        yield factory


@pytest.fixture
async def sqlite_sessions(sqlite_url: str, migrated_sqlite: MigratedSqlite
                          ) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sessions_on(migrated_sqlite(sqlite_url)) as factory:
        yield factory


@pytest.fixture
async def pg_sessions(migrated_postgres_url: str
                      ) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """PostgreSQL only: SQLite stores NUL and ignores varchar lengths."""
    async with sessions_on(migrated_postgres_url) as factory:
        yield factory


@pytest.fixture
def core(real_redis: Any, key_prefix: str) -> Core:
    return Core(real_redis, KeySpace(key_prefix, BUCKETS))
