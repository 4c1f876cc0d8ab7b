"""Storage lifecycle over HTTP: an upload URL works only while its job is `created` (local
folder), and a job whose results expired says so and hands out no URL (S3)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from service.contract import input_key, output_key
from service.flusher.loop import flush_once
from service.history.models import JobLog, utcnow
from service.runtime import open_runtime
from tests.api.conftest import SECRET, Api
from tests.api.flow import PNG_BYTES, callback, create_job, queued_job, report_item, upload_all

pytestmark = pytest.mark.redis


async def put(upload: dict[str, Any], content: bytes = PNG_BYTES) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as raw:
        return await raw.request(upload["method"], upload["url"], headers=upload["headers"],
                                 content=content)


def stored(api: Api, job_id: str, index: int) -> Path:
    return Path(api.settings.storage_dir).resolve() / input_key(job_id, index)


async def test_an_upload_url_stops_working_after_cancel_and_keeps_no_bytes(
    embedded_api: Api,
) -> None:
    api, user = embedded_api, embedded_api.user()
    job = await create_job(api, user, n=2)
    assert (await put(job["uploads"][0])).status_code == 200
    canceled = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    assert canceled.status_code == 200

    late = await put(job["uploads"][1], b"x" * len(PNG_BYTES))
    assert late.status_code == 409, late.text
    assert late.json()["code"] == "invalid_transition"
    assert late.json()["job_status"] == "canceled"
    assert not stored(api, job["id"], 1).exists()
    assert (await put(job["uploads"][0], b"y" * len(PNG_BYTES))).status_code == 409
    assert stored(api, job["id"], 0).read_bytes() == PNG_BYTES  # not overwritten


async def test_an_upload_url_stops_working_after_confirm(embedded_api: Api) -> None:
    api, user = embedded_api, embedded_api.user()
    job = await create_job(api, user, n=1)
    await upload_all(job)
    confirmed = await api.client.post(f"/jobs/{job['id']}/confirm-upload",
                                      headers=api.auth(user))
    assert confirmed.status_code == 200
    again = await put(job["uploads"][0], b"z" * len(PNG_BYTES))
    assert again.status_code == 409 and again.json()["job_status"] == "uploaded"
    assert stored(api, job["id"], 0).read_bytes() == PNG_BYTES


async def test_expired_results_show_result_expired_and_no_url(api: Api) -> None:
    user = api.user()
    job = await queued_job(api, user, n=2)
    job_id = job["id"]
    assert (await callback(api, job_id, user, idempotency_key="s", event="started")
            ).status_code == 200
    for index in range(2):
        await report_item(api, job_id, user, index, ok=index == 0)
    rt = await open_runtime(api.settings, SECRET)
    try:
        await rt.storage.write(output_key(job_id, 0), b"result")  # type: ignore[attr-defined]
        await flush_once(rt.core, rt.sessions, api.settings, storage=rt.storage)
        # The ok item's input goes at the flush; the failed one's stays for a retry
        # (TOLLGATE_RETRY_WINDOW).
        assert await rt.storage.missing([input_key(job_id, 0), input_key(job_id, 1)]) == [0]
        fresh = (await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))).json()
        assert fresh["status"] == "done" and fresh["result_expired"] is False
        assert "result_url" in fresh["items"][0]

        async with rt.sessions() as session, session.begin():
            await session.execute(update(JobLog).where(JobLog.id == job_id).values(
                finished_at=utcnow() - timedelta(seconds=api.settings.result_ttl + 1)))
        # Due already, before the flusher deleted anything: no URL to a file about to go.
        due = (await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))).json()
        assert due["result_expired"] is True and "result_url" not in due["items"][0]

        stats = await flush_once(rt.core, rt.sessions, api.settings, storage=rt.storage)
        assert stats.results_expired == 1
        assert await rt.storage.missing([output_key(job_id, 0)]) == [0]
    finally:
        await rt.close()
    gone = (await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))).json()
    assert gone["result_expired"] is True and "result_url" not in gone["items"][0]
    assert gone["items"][1]["status"] == "failed"
    listed = (await api.client.get("/jobs", headers=api.auth(user))).json()["items"]
    assert [item["result_expired"] for item in listed] == [True]
