"""The API on a 3-node Redis Cluster for state (RQ stays on a standalone Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.history.engine import run_migrations
from service.settings import Settings
from tests.api.conftest import SECRET, Api, ServerThread, drop_rq_queue
from tests.api.flow import create_job, me, report_item, upload_all
from tests.conftest import free_port


@pytest.fixture
async def cluster_api(cluster_url: str, redis_url: str, key_prefix: str, tmp_path: Path
                      ) -> AsyncIterator[Api]:
    import redis

    port = free_port()
    settings = Settings(
        redis_url=cluster_url, queue_redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path}/t.db", public_url=f"http://127.0.0.1:{port}",
        jwt_secret=SECRET, key_prefix=key_prefix, storage_dir=str(tmp_path / "files"),
        queue_name=key_prefix, flush_delay=0,
    )
    run_migrations(settings.database_url)
    with ServerThread(settings, port):
        async with httpx.AsyncClient(base_url=settings.public_url, timeout=30) as client:
            yield Api(settings.public_url, settings, client)
    connection = redis.Redis.from_url(redis_url)
    drop_rq_queue(connection, key_prefix)
    connection.close()


async def test_a_job_lives_its_whole_life_with_state_on_redis_cluster(cluster_api: Api) -> None:
    api, user = cluster_api, cluster_api.user()
    job = await create_job(api, user, 2)
    await upload_all(job)
    for action, status in (("confirm-upload", 200), ("execute", 202)):
        response = await api.client.post(f"/jobs/{job['id']}/{action}", headers=api.auth(user))
        assert response.status_code == status, response.text
    await report_item(api, job["id"], user, 0)
    await report_item(api, job["id"], user, 1, ok=False)
    view = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert (view["status"], view["charged"], view["refunded"]) == ("done", 1, 1)
    listed = (await api.client.get("/jobs", headers=api.auth(user))).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]
    assert (await me(api, user))["credits"] == {"available": 9, "reserved": 0, "spent": 1,
                                                "granted": 10}
    assert (await api.client.get("/ready")).status_code == 200
