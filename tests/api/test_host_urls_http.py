"""Compose from the host: clients get URLs for the public addresses, workers for the internal
ones (TOLLGATE_PUBLIC_URL / TOLLGATE_INTERNAL_URL, TOLLGATE_S3_PUBLIC_ENDPOINT /
TOLLGATE_S3_ENDPOINT). Real API, Redis, PostgreSQL and S3 (moto)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from rq.job import Job

from service.contract import SERIALIZER, rq_job_id
from tests.api.conftest import Api
from tests.api.flow import PNG_BYTES, create_job, upload_all
from tests.api.scheduling import drain

INTERNAL_URL = "http://api.internal:8000"


@pytest.fixture
def settings_overrides(s3_endpoint: str) -> dict[str, Any]:
    # The same moto server under another host name: its URLs must be signed for that host.
    return {"internal_url": INTERNAL_URL,
            "s3_public_endpoint": s3_endpoint.replace("127.0.0.1", "localhost")}


def host(url: str) -> str:
    return urlsplit(url).netloc


async def test_clients_get_public_urls_and_workers_internal_ones(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, credits=10)
    internal_s3 = host(api.settings.s3_endpoint or "")
    public_s3 = host(api.settings.s3_public_endpoint or "")
    job = await create_job(api, user, 1)
    upload_url = job["uploads"][0]["url"]
    assert host(upload_url) == public_s3 and public_s3 != internal_s3
    await upload_all(job)  # through the public host: its signature is for that host
    for step in ("confirm-upload", "execute"):
        response = await api.client.post(f"/jobs/{job['id']}/{step}", headers=api.auth(user))
        assert response.status_code in (200, 202), response.text
    await drain(api.settings)  # the dispatcher signs the worker's URLs as it hands the batch
    connection = redis.Redis.from_url(api.settings.queue_redis_url or "")
    try:
        payload = Job.fetch(rq_job_id(job["id"], 0), connection=connection,
                            serializer=SERIALIZER).args[0]
    finally:
        connection.close()
    assert payload["callback_url"] == f"{INTERNAL_URL}/jobs/{job['id']}/callback"
    item = payload["items"][0]
    assert host(item["input_url"]) == internal_s3 and host(item["output_url"]) == internal_s3
    async with httpx.AsyncClient(timeout=30) as raw:
        # The worker's URLs work at the internal endpoint.
        downloaded = await raw.get(item["input_url"])
        assert downloaded.status_code == 200 and downloaded.content == PNG_BYTES
        stored = await raw.put(item["output_url"], content=b"out",
                               headers={"Content-Type": "image/png"})
        assert stored.status_code == 200, stored.text
    # The job's own links stay public (clients follow them).
    shown = await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))
    assert shown.status_code == 200
    assert INTERNAL_URL not in shown.text
