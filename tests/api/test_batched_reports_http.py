"""`event: "items"` over HTTP: a batch's reports in one request, each item counted once, on
the real Redis and on a Redis Cluster; `event: "item"` keeps working beside it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.conftest import Api
from tests.api.flow import callback, create_job, me, report_item, upload_all


@pytest.fixture(params=["real", "cluster"])
def any_api(request: pytest.FixtureRequest) -> Api:
    api: Api = request.getfixturevalue("api" if request.param == "real" else "cluster_api")
    return api


async def running_job(api: Api, user: str, n: int) -> dict[str, Any]:
    job = await create_job(api, user, n)
    await upload_all(job)
    for action, status in (("confirm-upload", 200), ("execute", 202)):
        response = await api.client.post(f"/jobs/{job['id']}/{action}", headers=api.auth(user))
        assert response.status_code == status, response.text
    return job


def entry(job_id: str, index: int, ok: bool = True, key: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"index": index, "ok": ok,
                            "idempotency_key": key or f"{job_id}:item:{index}"}
    if ok:
        body["output_key"] = f"jobs/{job_id}/out/{index}"
    else:
        body["error"] = "processor raised"
    return body


async def report_items(api: Api, job_id: str, owner: str, entries: list[dict[str, Any]]
                       ) -> httpx.Response:
    return await callback(api, job_id, owner, event="items", items=entries)


async def test_one_request_reports_a_batch_and_a_repeat_counts_nothing(any_api: Api) -> None:
    api, user = any_api, any_api.user()
    job = await running_job(api, user, 4)
    job_id = job["id"]
    batch = [entry(job_id, 0), entry(job_id, 1, ok=False)]
    first = await report_items(api, job_id, user, batch)
    assert first.status_code == 200, first.text
    assert first.json() == {"counted": 2, "duplicates": 0, "status": "running",
                            "done_items": 1, "failed_items": 1}
    again = await report_items(api, job_id, user, batch)
    assert again.json() == {"counted": 0, "duplicates": 2, "status": "running",
                            "done_items": 1, "failed_items": 1}

    # An old worker's single report, then a batch mixing known and new items.
    await report_item(api, job_id, user, 2)
    last = await report_items(api, job_id, user, [entry(job_id, 2, key="new-key-2"),
                                                  entry(job_id, 3), entry(job_id, 0)])
    assert last.json() == {"counted": 1, "duplicates": 2, "status": "done",
                           "done_items": 3, "failed_items": 1}
    view = (await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))).json()
    assert (view["status"], view["charged"], view["refunded"]) == ("done", 3, 1)
    assert [item["status"] for item in view["items"]] == ["ok", "failed", "ok", "ok"]
    assert view["items"][1]["error"] == "processor raised"
    assert (await me(api, user))["credits"]["spent"] == 3


async def test_the_stored_output_key_is_the_jobs_own(api: Api) -> None:
    user = api.user()
    job = await running_job(api, user, 1)
    forged = {**entry(job["id"], 0), "output_key": "jobs/someone-else/out/0"}
    assert (await report_items(api, job["id"], user, [forged])).status_code == 200
    view = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert f"jobs/{job['id']}/out/0" in view["items"][0]["result_url"]


async def test_bad_batches_are_refused_before_anything_counts(api: Api) -> None:
    user = api.user()
    job = await running_job(api, user, 2)
    job_id = job["id"]
    refusals = [
        [],                                                    # no entries
        [entry(job_id, 0), entry(job_id, 2)],                  # index out of range
        [{"index": 0, "ok": True}],                            # no idempotency key
        [entry(job_id, i % 2, key=f"k{i}") for i in range(1001)],  # over 1000 entries
    ]
    for entries in refusals:
        response = await report_items(api, job_id, user, entries)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "validation_error"
    no_items = await callback(api, job_id, user, event="items")
    assert no_items.status_code == 422
    no_key = await callback(api, job_id, user, event="item", item_index=0, ok=True)
    assert no_key.status_code == 422
    view = (await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))).json()
    assert (view["done_items"], view["failed_items"]) == (0, 0)


async def test_a_batch_for_a_canceled_job_is_409_unless_all_known(api: Api) -> None:
    user = api.user()
    job = await running_job(api, user, 3)
    job_id = job["id"]
    await report_items(api, job_id, user, [entry(job_id, 0)])
    assert (await api.client.post(f"/jobs/{job_id}/cancel",
                                  headers=api.auth(user))).status_code == 200
    known = await report_items(api, job_id, user, [entry(job_id, 0)])
    assert known.status_code == 200 and known.json()["status"] == "canceled"
    refused = await report_items(api, job_id, user, [entry(job_id, 0), entry(job_id, 1)])
    assert (refused.status_code, refused.json()["code"]) == (409, "invalid_transition")
    wrong_token = await api.client.post(f"/jobs/{job_id}/callback",
                                        json={"event": "items", "items": [entry(job_id, 1)]})
    assert wrong_token.status_code == 401
