"""The API served on each of the three Redis back ends, in as many processes (threads) as a
test asks for: `backend` picks the state store, `serve(**settings)` starts one more API on
it with the rate limits on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.settings import Settings
from tests.api.conftest import SECRET, Api, ServerThread
from tests.conftest import MigratedSqlite, free_port

Serve = Callable[..., Api]


@pytest.fixture(params=["fakeredis", "redis", "cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, key_prefix: str
            ) -> Iterator[dict[str, Any]]:
    """The settings that pick the state store; the Redis fixtures are asked for lazily so
    that the fakeredis case needs no service."""
    if request.param == "fakeredis":
        import fakeredis

        import service.state.clients as clients

        clients._EMBEDDED = fakeredis.FakeServer()
        yield {}
        return
    url = (request.getfixturevalue("redis_url") if request.param == "redis"
           else request.getfixturevalue("cluster_url"))
    request.getfixturevalue("real_redis")  # deletes the prefix's keys after
    yield {"redis_url": url, "queue_redis_url": request.getfixturevalue("redis_url"),
           "key_prefix": key_prefix, "queue_name": key_prefix}


@pytest.fixture
async def serve(backend: dict[str, Any], tmp_path: Path, migrated_sqlite: MigratedSqlite
                ) -> AsyncIterator[Serve]:
    """Starts API processes (threads) on one state store and one database, limits on."""
    database = migrated_sqlite(f"sqlite:///{tmp_path}/tollgate.db")
    with ExitStack() as servers:
        clients: list[httpx.AsyncClient] = []

        def start(**overrides: Any) -> Api:
            port = free_port()
            settings = Settings(**{
                "database_url": database, "public_url": f"http://127.0.0.1:{port}",
                "jwt_secret": SECRET, "storage_dir": str(tmp_path / "files"), "flush_delay": 0,
                "rate_limits_enabled": True, **backend, **overrides})
            servers.enter_context(ServerThread(settings, port))
            client = httpx.AsyncClient(base_url=settings.public_url, timeout=30)
            clients.append(client)
            return Api(settings.public_url, settings, client)

        yield start
        for client in clients:
            await client.aclose()
