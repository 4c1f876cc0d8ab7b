"""POST /jobs `result_ttl_s` (docs/reference.md): a job's own result TTL, 3600 to 2592000 s, stored
on the job and its jobs_log row; its outputs are deleted after it (S3 and the local folder)
and its view says `result_expired`, while a job on the default TTL keeps its files."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from service.contract import output_key
from service.flusher.loop import flush_once
from service.history.models import JobLog, utcnow
from service.runtime import Runtime
from tests.api.conftest import Api
from tests.api.flow import items, queued_job, report_item, upload_all

HOUR = 3600




@pytest.mark.parametrize("ttl", [HOUR - 1, 30 * 86400 + 1, 0, -HOUR])
async def test_a_result_ttl_out_of_bounds_is_422(embedded_api: Api, ttl: object) -> None:
    api, user = embedded_api, embedded_api.user()
    response = await api.client.post("/jobs", json={"items": items(1), "result_ttl_s": ttl},
                                     headers=api.auth(user))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


async def finished_own(api: Api, user: str, ttl: int) -> str:
    created = await api.client.post("/jobs", json={"items": items(1), "result_ttl_s": ttl},
                                    headers=api.auth(user))
    job = created.json()
    await upload_all(job)
    for step in ("confirm-upload", "execute"):
        await api.client.post(f"/jobs/{job['id']}/{step}", headers=api.auth(user))
    await report_item(api, job["id"], user, 0)
    return str(job["id"])


async def test_outputs_go_after_the_jobs_own_ttl_not_the_default(any_api: Api, rt: Runtime
                                                                 ) -> None:
    api, user = any_api, any_api.user()
    await api.admin_create_user(user, plan="pro", credits=20)
    own = await finished_own(api, user, HOUR)
    default = (await queued_job(api, user, 1))["id"]
    await report_item(api, default, user, 0)
    live = (await api.client.get(f"/jobs/{own}", headers=api.auth(user))).json()
    assert (live["result_ttl_s"], live["result_expired"]) == (HOUR, False)
    for job_id in (own, default):
        await rt.storage.write(output_key(job_id, 0), b"result")  # type: ignore[attr-defined]
    await flush_once(rt.core, rt.sessions, api.settings, storage=rt.storage)
    async with rt.sessions() as session:
        row = (await session.scalars(select(JobLog).where(JobLog.id == own))).one()
    assert row.result_ttl_s == HOUR
    assert row.finished_at is not None
    assert row.results_expire_at == row.finished_at + timedelta(seconds=HOUR)

    # Both finished a little over an hour ago: only the one-hour job is due.
    async with rt.sessions() as session, session.begin():
        for job_id in (own, default):
            await session.execute(update(JobLog).where(JobLog.id == job_id).values(
                finished_at=utcnow() - timedelta(seconds=HOUR + 5)))
        await session.execute(update(JobLog).where(JobLog.id == own).values(
            results_expire_at=utcnow() - timedelta(seconds=5)))
    view = (await api.client.get(f"/jobs/{own}", headers=api.auth(user))).json()
    assert view["result_expired"] is True and "result_url" not in view["items"][0]
    kept = (await api.client.get(f"/jobs/{default}", headers=api.auth(user))).json()
    assert kept["result_expired"] is False and "result_url" in kept["items"][0]
    assert kept["result_ttl_s"] == api.settings.result_ttl

    stats = await flush_once(rt.core, rt.sessions, api.settings, storage=rt.storage)
    assert stats.results_expired == 1
    assert await rt.storage.missing([output_key(own, 0), output_key(default, 0)]) == [0]
