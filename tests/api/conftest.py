"""The real app served over HTTP by uvicorn in a thread, on real Redis, PostgreSQL and S3.

`api` runs on the real services (each test its own key prefix, database, bucket and RQ
queue); `embedded_api` runs on the embedded defaults (fakeredis, SQLite, a local folder).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
import uvicorn
from litestar import Litestar

from service.api.app import create_app
from service.api.auth import issue_token
from service.runtime import Runtime, open_runtime
from service.settings import Settings
from tests.conftest import MigratedSqlite, free_port

SECRET = "test-secret-" + "x" * 32


class QuickServer(uvicorn.Server):
    """uvicorn's Server, quick to stop: `stop()` wakes its main loop (uvicorn's looks every
    0.1 s), and its shutdown waits for the open connections without uvicorn's fixed 0.1 s
    pause first (the tests close their clients before the server). Otherwise uvicorn's
    shutdown: no new connections, the open ones told to close and waited for, the tasks
    waited for, then the app's lifespan shutdown."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    def stop(self) -> None:
        """From another thread."""
        self.should_exit = True
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended already
                self._loop.call_soon_threadsafe(self._wake.set)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        # uvicorn's own wait (it has no event for it), at a finer step.
        while self.server_state.connections or self.server_state.tasks:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()


class ServerThread:
    def __init__(self, settings: Settings, port: int) -> None:
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                log_level="warning", lifespan="on", ws="none")
        self.server = QuickServer(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test API server did not start")
            time.sleep(0.005)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.stop()
        self.thread.join(timeout=20)


@dataclass
class Api:
    url: str
    settings: Settings
    client: httpx.AsyncClient
    tokens: dict[str, str] = field(default_factory=dict)
    server: ServerThread | None = None

    def runtime(self) -> Runtime:
        """The served app's own Runtime (its lifespan opened it), in this process."""
        assert self.server is not None, "not served by a ServerThread of this process"
        app = cast(Litestar, self.server.server.config.app)
        runtime: Runtime = app.state.runtime
        return runtime

    def token(self, user_id: str, *, admin: bool = False) -> str:
        return issue_token(SECRET, user_id, admin=admin, ttl_s=3600)

    def auth(self, user_id: str, *, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user_id, admin=admin)}"}

    def user(self) -> str:
        return f"user-{uuid.uuid4().hex[:8]}"

    async def admin_create_user(self, user_id: str, *, plan: str = "free", credits: int = 10
                                ) -> dict[str, Any]:
        response = await self.client.post(
            "/admin/users", json={"id": user_id, "plan": plan, "credits": credits},
            headers=self.auth("root", admin=True))
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body


def _serve(settings: Settings) -> Iterator[ServerThread]:
    port = int(settings.public_url.rsplit(":", 1)[1])
    with ServerThread(settings, port) as served:
        yield served


class Clock:
    """tollgate's clock (`now_ms`: the state's calls, the flusher, the dispatcher), moved
    ahead of the real one by the test; what reads datetime.now() (JWTs, API keys, the
    checks of a grant's expires_at, SQL timestamps) keeps the real time."""

    def __init__(self, real: Callable[[], int]) -> None:
        self.real = real
        self.ahead_ms = 0

    def now_ms(self) -> int:
        return self.real() + self.ahead_ms

    def move_past(self, when: datetime | int, *, by_s: float = 0.2) -> None:
        """Moves the clock to `by_s` past `when` (a time, or epoch milliseconds), as a wait
        until then would: later, never earlier, than it is."""
        at_ms = when if isinstance(when, int) else int(when.timestamp() * 1000)
        self.ahead_ms = max(self.ahead_ms, at_ms + int(by_s * 1000) - self.real())


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A Clock in place of `service.state.base.now_ms` in every module of the process that
    holds it (the served app's threads included), for the test."""
    import service.state.base as base

    real = base.now_ms
    moved = Clock(real)
    for name, module in list(sys.modules.items()):
        if (name.split(".")[0] in ("service", "workers")
                and getattr(module, "now_ms", None) is real):
            monkeypatch.setattr(module, "now_ms", moved.now_ms)
    return moved


@pytest.fixture(autouse=True)
def live_business_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scrapes here read Redis each time, so that a test sees the counters its last step
    moved; tests/api/test_metrics_access_http.py checks the 5 s snapshot itself."""
    import service.api.business_metrics as business_metrics

    monkeypatch.setattr(business_metrics, "SNAPSHOT_TTL_S", 0.0)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module to change the served settings (e.g. a short lease)."""
    return {}


@pytest.fixture
def real_settings(redis_url: str, migrated_postgres_url: str, s3_endpoint: str,
                  key_prefix: str, settings_overrides: dict[str, Any]) -> Iterator[Settings]:
    port = free_port()
    base: dict[str, Any] = dict(
        redis_url=redis_url, queue_redis_url=redis_url, database_url=migrated_postgres_url,
        public_url=f"http://127.0.0.1:{port}", jwt_secret=SECRET, key_prefix=key_prefix,
        buckets=16, s3_endpoint=s3_endpoint, s3_bucket=key_prefix, s3_access_key="test",
        s3_secret_key="test", queue_name=key_prefix, flush_delay=0,
    )
    settings = Settings(**{**base, **settings_overrides})
    s3_admin(s3_endpoint).create_bucket(Bucket=key_prefix)
    yield settings
    connection = redis.Redis.from_url(redis_url)
    drop_rq_queue(connection, key_prefix)
    connection.close()


@functools.cache
def s3_admin(endpoint: str) -> Any:
    """One boto3 client per S3 server for the process (a new client costs ~50 ms)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                        aws_secret_access_key="test", region_name="us-east-1")


def drop_rq_queue(connection: redis.Redis, queue_name: str) -> None:
    """Deletes a test queue and every RQ job that came from it (ids hold no queue name)."""
    for key in connection.scan_iter(match="rq:job:tg-*", count=1000):
        if connection.hget(key, "origin") == queue_name.encode():
            job_id = key.decode().removeprefix("rq:job:")
            connection.delete(key, f"rq:results:{job_id}", f"{key.decode()}:dependents")
            for execution in connection.scan_iter(match=f"rq:executions:{job_id}*"):
                connection.delete(execution)
    # Workers a test killed never unregister themselves.
    for worker in connection.smembers("rq:workers"):
        if connection.hget(worker, "queues") == queue_name.encode():
            connection.delete(worker)
            connection.srem("rq:workers", worker)
    for key in connection.scan_iter(match=f"rq:*{queue_name}*", count=1000):
        connection.delete(key)
    connection.srem("rq:queues", f"rq:queue:{queue_name}")


@pytest.fixture
async def api(real_settings: Settings, real_redis: Any) -> AsyncIterator[Api]:
    url = real_settings.public_url
    for served in _serve(real_settings):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Api(url, real_settings, client, server=served)


@pytest.fixture
async def embedded_api(tmp_path: Path, migrated_sqlite: MigratedSqlite) -> AsyncIterator[Api]:
    import fakeredis

    import service.state.clients as clients

    clients._EMBEDDED = fakeredis.FakeServer()  # a fresh embedded server per test
    port = free_port()
    settings = Settings(
        database_url=migrated_sqlite(f"sqlite:///{tmp_path}/tollgate.db"),
        public_url=f"http://127.0.0.1:{port}", jwt_secret=SECRET,
        storage_dir=str(tmp_path / "files"), flush_delay=0,
    )
    url = settings.public_url
    for served in _serve(settings):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Api(url, settings, client, server=served)


@pytest.fixture
async def cluster_api(cluster_url: str, redis_url: str, key_prefix: str, tmp_path: Path,
                      migrated_sqlite: MigratedSqlite) -> AsyncIterator[Api]:
    """The API with its state on a 3-node Redis Cluster (RQ stays on a standalone Redis)."""
    port = free_port()
    settings = Settings(
        redis_url=cluster_url, queue_redis_url=redis_url,
        database_url=migrated_sqlite(f"sqlite:///{tmp_path}/t.db"),
        public_url=f"http://127.0.0.1:{port}", jwt_secret=SECRET, key_prefix=key_prefix,
        storage_dir=str(tmp_path / "files"), queue_name=key_prefix, flush_delay=0,
    )
    with ServerThread(settings, port) as served:
        async with httpx.AsyncClient(base_url=settings.public_url, timeout=30) as client:
            yield Api(settings.public_url, settings, client, server=served)
    connection = redis.Redis.from_url(redis_url)
    drop_rq_queue(connection, key_prefix)
    connection.close()


@pytest.fixture(params=["real", "embedded", "cluster"])
def any_api(request: pytest.FixtureRequest) -> Api:
    """The API on each Redis back end in turn: standalone Redis (with PostgreSQL and S3 where
    real_settings gives them), the embedded fakeredis, a Cluster."""
    fixture = {"real": "api", "embedded": "embedded_api", "cluster": "cluster_api"}
    api: Api = request.getfixturevalue(fixture[request.param])
    return api


@pytest.fixture
async def rt(any_api: Api) -> AsyncIterator[Runtime]:
    """A Runtime of the test's own over the same settings as `any_api` (its Redis, SQL and
    storage), for reading and arranging state behind the API."""
    runtime = await open_runtime(any_api.settings, SECRET)
    yield runtime
    await runtime.close()
