"""The Alembic migrations build exactly the schema of the models, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from service.history.engine import (
    alembic_config,
    async_url,
    make_engine,
    run_migrations,
    sync_url,
)
from service.history.models import Base


@pytest.mark.parametrize(
    ("given", "async_form", "sync_form"),
    [
        ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db", "sqlite:///./x.db"),
        ("sqlite+aiosqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("postgresql://u:p%40@h:5432/d", "postgresql+psycopg://u:p%40@h:5432/d",
         "postgresql+psycopg://u:p%40@h:5432/d"),
        ("postgres://h/d", "postgresql+psycopg://h/d", "postgresql+psycopg://h/d"),
        ("postgresql+psycopg://h/d", "postgresql+psycopg://h/d", "postgresql+psycopg://h/d"),
    ],
)
def test_user_urls_become_driver_urls(given: str, async_form: str, sync_form: str) -> None:
    assert async_url(given) == async_form
    assert sync_url(given) == sync_form


@pytest.mark.parametrize("url", ["mysql://h/d", "not a url"])
def test_unsupported_databases_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        async_url(url)


def test_migrations_match_the_models_and_rerun_harmlessly(empty_database_url: str) -> None:
    database_url = empty_database_url
    run_migrations(database_url)
    run_migrations(database_url)  # a second `tollgate migrate` is a no-op
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert compare_metadata(context, Base.metadata) == []
            head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
            assert head is not None and context.get_current_revision() == head
            tables = set(inspect(connection).get_table_names())
            indexes = {ix["name"] for ix in inspect(connection).get_indexes("jobs_log")}
    finally:
        engine.dispose()
    assert {"users", "rules", "jobs_log", "credit_ledger", "admin_ops",
            "alembic_version"} <= tables
    assert "ix_jobs_log_user_created" in indexes


def test_sqlite_migrations_create_the_folder_of_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deeper' / 'still' / 'db.sqlite'}"
    run_migrations(url)
    assert (tmp_path / "deeper" / "still" / "db.sqlite").is_file()


async def test_sqlite_engine_runs_in_wal_mode(sqlite_url: str) -> None:
    run_migrations(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        async with engine.connect() as connection:
            mode = (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar()
            timeout = (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar()
    finally:
        await engine.dispose()
    assert mode == "wal"
    assert timeout == 5000
