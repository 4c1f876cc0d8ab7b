"""Database URLs, the async engine, and running the Alembic migrations from code.

Users write plain URLs (`sqlite:///./tollgate.db`, `postgresql://...`); the service runs
async drivers (aiosqlite, psycopg 3) and the migrations run on the sync form of the same
drivers, so `tollgate migrate` needs no event loop and no alembic.ini.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

_SQLITE_BUSY_TIMEOUT_MS = 5000
SQL_CONNECT_TIMEOUT_S = 5


def _split(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: {url!r}")
    return scheme.lower(), rest


def _family(scheme: str) -> str:
    base = scheme.split("+", 1)[0]
    if base == "sqlite":
        return "sqlite"
    if base in ("postgresql", "postgres"):
        return "postgresql"
    raise ValueError(f"unsupported database {scheme!r}: use sqlite:/// or postgresql://")


def async_url(url: str) -> str:
    scheme, rest = _split(url)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}[_family(scheme)]
    return f"{driver}://{rest}"


def sync_url(url: str) -> str:
    scheme, rest = _split(url)
    # psycopg 3 is both the async and the sync driver; plain sqlite is the stdlib driver.
    driver = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}[_family(scheme)]
    return f"{driver}://{rest}"


def is_sqlite(url: str) -> bool:
    return _family(_split(url)[0]) == "sqlite"


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while the flusher writes; the busy timeout makes a second
    # writer wait instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, **options: Any) -> AsyncEngine:
    if is_sqlite(url):
        engine = create_async_engine(async_url(url), **options)
        event.listen(engine.sync_engine, "connect", _tune_sqlite)
        return engine
    options.setdefault("pool_pre_ping", True)
    if "connect_timeout=" not in url:
        # Without one, a database behind a dropped route holds every request that needs it
        # (and /ready) for minutes; with one, they answer 503 unavailable in seconds.
        options.setdefault("connect_args", {"connect_timeout": SQL_CONNECT_TIMEOUT_S})
    return create_async_engine(async_url(url), **options)


def make_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: handlers read rows after commit without another round trip.
    return async_sessionmaker(engine, expire_on_commit=False)


def migrations_dir() -> Path:
    """The Alembic scripts ship inside the package, so this works from an installed wheel."""
    return Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # Passed as an attribute, not a main option: ConfigParser would choke on '%' in passwords.
    config.attributes["url"] = sync_url(url)
    return config


def run_migrations(url: str, revision: str = "head") -> None:
    from alembic import command

    if is_sqlite(url):
        _ensure_sqlite_folder(url)
    command.upgrade(alembic_config(url), revision)


def _ensure_sqlite_folder(url: str) -> None:
    path = _split(url)[1].removeprefix("/").split("?", 1)[0]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
