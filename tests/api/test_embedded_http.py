"""The same API on the embedded defaults (fakeredis, SQLite, local folder): no services."""

from __future__ import annotations

import httpx

from tests.api.conftest import Api
from tests.api.flow import PNG_BYTES, callback, create_job, me, report_item, upload_all


async def test_a_job_lives_its_whole_life_on_the_embedded_defaults(embedded_api: Api) -> None:
    api, user = embedded_api, embedded_api.user()
    job = await create_job(api, user, 2)
    assert job["uploads"][0]["url"].startswith(f"{api.url}/files/")
    missing = await api.client.post(f"/jobs/{job['id']}/confirm-upload", headers=api.auth(user))
    assert missing.status_code == 409 and missing.json()["missing"] == [0, 1]
    await upload_all(job)
    assert (await api.client.post(f"/jobs/{job['id']}/confirm-upload",
                                  headers=api.auth(user))).status_code == 200
    assert (await api.client.post(f"/jobs/{job['id']}/execute",
                                  headers=api.auth(user))).status_code == 202
    await callback(api, job["id"], user, idempotency_key="s", event="started")
    await report_item(api, job["id"], user, 0)
    await report_item(api, job["id"], user, 1, ok=False)
    from tests.api.history import flush_everything

    await flush_everything(api)
    view = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert (view["status"], view["charged"], view["refunded"]) == ("done", 1, 1)
    assert (await me(api, user))["credits"]["spent"] == 1


async def test_local_upload_urls_refuse_tampering(embedded_api: Api) -> None:
    api, user = embedded_api, embedded_api.user()
    job = await create_job(api, user, 1)
    url = job["uploads"][0]["url"]
    async with httpx.AsyncClient() as raw:
        forged = await raw.put(url.replace("/in/0", "/in/1"), content=PNG_BYTES,
                               headers=job["uploads"][0]["headers"])
        too_big = await raw.put(url, content=PNG_BYTES * 4, headers=job["uploads"][0]["headers"])
        ok = await raw.put(url, content=PNG_BYTES, headers=job["uploads"][0]["headers"])
    assert forged.status_code == 403 and forged.json()["code"] == "bad_signature"
    assert too_big.status_code == 413
    assert ok.status_code == 200
