"""/health, /ready, /metrics and /schema."""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from service.settings import Settings
from tests.api.conftest import SECRET, Api, ServerThread
from tests.conftest import MigratedSqlite, free_port


async def test_health_and_ready(api: Api) -> None:
    assert (await api.client.get("/health")).json() == {"status": "ok"}
    ready = await api.client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def _server_with_dead_redis(tmp_url: str) -> Iterator[str]:
    port = free_port()
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0",
                        queue_redis_url=f"redis://127.0.0.1:{free_port()}/0",
                        database_url=tmp_url, jwt_secret=SECRET,
                        public_url=f"http://127.0.0.1:{port}")
    with ServerThread(settings, port):
        yield settings.public_url


async def test_ready_is_503_when_redis_is_down(tmp_path: object,
                                              migrated_sqlite: MigratedSqlite) -> None:
    url = migrated_sqlite(f"sqlite:///{tmp_path}/t.db")
    for base in _server_with_dead_redis(url):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            response = await client.get("/ready")
        assert response.status_code == 503
        assert response.json()["code"] == "not_ready"
        assert "redis" in response.json()["failures"]


async def test_metrics_group_job_paths(api: Api) -> None:
    user = api.user()
    for _ in range(2):
        await api.client.get(f"/jobs/{'0' * 26}-1", headers=api.auth(user))
    text = (await api.client.get("/metrics")).text
    assert "tollgate_requests_total" in text
    assert 'path="/jobs/{job_id}"' in text and "0" * 26 not in text


async def test_openapi_schema(api: Api) -> None:
    schema = (await api.client.get("/schema/openapi.json")).json()
    assert schema["openapi"].startswith("3.1")
    for path in ("/me", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/callback", "/rules",
                 "/admin/users", "/ready"):
        assert path in schema["paths"], path
