"""The API across a Redis crash: a clear 503 while Redis is gone, service again once it is
back, with no restart of the API (its auto-pipelined connections and the script cache
recover by themselves)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from service.api.auth import issue_token
from service.settings import Settings
from tests.api.conftest import SECRET, ServerThread
from tests.conftest import MigratedSqlite, OwnRedis, free_port

JOB = {"items": [{"name": "a.png", "content_type": "image/png", "size": 10}]}


async def test_a_redis_crash_answers_503_then_the_api_recovers_without_a_restart(
    own_redis: OwnRedis, tmp_path: Path, migrated_sqlite: MigratedSqlite
) -> None:
    database = migrated_sqlite(f"sqlite:///{tmp_path}/t.db")
    port = free_port()
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    settings = Settings(redis_url=url, queue_redis_url=url, database_url=database,
                        public_url=f"http://127.0.0.1:{port}", jwt_secret=SECRET,
                        storage_dir=str(tmp_path / "files"), signup_credits=100)
    headers = {"Authorization": f"Bearer {issue_token(SECRET, 'ann')}"}
    with ServerThread(settings, port):
        async with httpx.AsyncClient(base_url=settings.public_url, timeout=30) as client:
            assert (await client.post("/jobs", json=JOB, headers=headers)).status_code == 201

            own_redis.kill()
            answers = await asyncio.gather(*(client.post("/jobs", json=JOB, headers=headers)
                                             for _ in range(8)), client.get("/me", headers=headers))
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert answer.json()["code"] == "unavailable"
                assert answer.headers["Retry-After"] == "1"

            # Back, empty (no persistence): no script is cached, the user is unknown again.
            own_redis.start()
            created = await client.post("/jobs", json=JOB, headers=headers)
            assert created.status_code == 201, created.text
            me = (await client.get("/me", headers=headers)).json()
            assert me["credits"]["reserved"] == 1
            job = await client.get(f"/jobs/{created.json()['id']}", headers=headers)
            assert job.status_code == 200 and job.json()["status"] == "created"
