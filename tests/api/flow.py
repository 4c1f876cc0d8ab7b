"""Steps of a job's life over HTTP, shared by the API tests."""

from __future__ import annotations

from typing import Any

import httpx

from service.contract import callback_token
from service.runtime import derived_secret
from tests.api.conftest import SECRET, Api

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"0" * 64


def items(n: int, size: int = len(PNG_BYTES)) -> list[dict[str, Any]]:
    return [{"name": f"img-{i}.png", "content_type": "image/png", "size": size} for i in range(n)]


async def create_job(api: Api, user: str, n: int = 2, **extra: Any) -> dict[str, Any]:
    response = await api.client.post("/jobs", json={"items": items(n), **extra},
                                      headers=api.auth(user))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def upload_all(job: dict[str, Any], skip: frozenset[int] = frozenset()) -> None:
    async with httpx.AsyncClient(timeout=30) as raw:
        for upload in job["uploads"]:
            if upload["index"] in skip:
                continue
            response = await raw.request(upload["method"], upload["url"],
                                         headers=upload["headers"], content=PNG_BYTES)
            assert response.status_code in (200, 201, 204), response.text


async def queued_job(api: Api, user: str, n: int = 2) -> dict[str, Any]:
    job = await create_job(api, user, n)
    await upload_all(job)
    confirmed = await api.client.post(f"/jobs/{job['id']}/confirm-upload", headers=api.auth(user))
    assert confirmed.status_code == 200, confirmed.text
    executed = await api.client.post(f"/jobs/{job['id']}/execute", headers=api.auth(user))
    assert executed.status_code == 202, executed.text
    body: dict[str, Any] = executed.json()
    return body


def worker_auth(job_id: str, owner: str) -> dict[str, str]:
    token = callback_token(derived_secret(SECRET, "callback").hex(), job_id, owner)
    return {"Authorization": f"Bearer {token}"}


async def callback(api: Api, job_id: str, owner: str, **body: Any) -> httpx.Response:
    return await api.client.post(f"/jobs/{job_id}/callback", json=body,
                                 headers=worker_auth(job_id, owner))


async def report_item(api: Api, job_id: str, owner: str, index: int, ok: bool = True,
                      key: str | None = None) -> dict[str, Any]:
    response = await callback(api, job_id, owner, idempotency_key=key or f"{job_id}:item:{index}",
                              event="item", item_index=index, ok=ok,
                              error=None if ok else "processor raised")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def me(api: Api, user: str) -> dict[str, Any]:
    response = await api.client.get("/me", headers=api.auth(user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
