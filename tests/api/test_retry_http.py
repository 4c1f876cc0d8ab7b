"""POST /jobs/{id}/retry (docs/client.md, "Waiting, retrying failed items"): a new job of
only the failed items, on copies of the stored inputs, held and charged through reserve.lua
like any job. On Redis with S3, the embedded fakeredis and a local folder, and a Cluster."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from service.contract import input_key
from service.flusher.loop import flush_once
from service.history.models import JobLog, utcnow
from service.runtime import Runtime
from tests.api.conftest import Api
from tests.api.flow import PNG_BYTES, me, queued_job, report_item

FAILED = (1, 4, 6)  # 3 of 8 items fail




async def finished_with_failures(api: Api, user: str, failed: tuple[int, ...] = FAILED,
                                 n: int = 8, *, new_user: bool = True) -> str:
    if new_user:
        await api.admin_create_user(user, plan="pro", credits=20)
    job = await queued_job(api, user, n)
    for index in range(n):
        await report_item(api, job["id"], user, index, ok=index not in failed)
    return str(job["id"])


async def post_retry(api: Api, user: str, job_id: str, **headers: str) -> Any:
    return await api.client.post(f"/jobs/{job_id}/retry",
                                 headers={**api.auth(user), **headers})


@pytest.mark.parametrize("flushed", [False, True], ids=["live", "flushed"])
async def test_a_retry_runs_only_the_failed_items_and_charges_at_most_their_price(
    any_api: Api, rt: Runtime, flushed: bool,
) -> None:
    api, user = any_api, any_api.user()
    job_id = await finished_with_failures(api, user)
    spent_before = (await me(api, user))["credits"]["spent"]
    assert spent_before == 5
    if flushed:  # the original is read from SQL history now
        await flush_once(rt.core, rt.sessions, api.settings, storage=rt.storage)
        assert await rt.core.job(job_id) is None

    response = await post_retry(api, user, job_id)
    assert response.status_code == 201, response.text
    retry = response.json()
    assert retry["retry_of"] == job_id and retry["uploads"] == []
    assert (retry["status"], retry["total_items"], retry["cost"]) == ("uploaded", 3, 3)
    assert retry["model"] == "thumbnail" and retry["idempotent_replay"] is False
    assert (await me(api, user))["credits"]["reserved"] == 3  # held like any job
    for position in range(3):  # copies of the failed items' inputs, in their order
        assert await rt.storage.read(input_key(retry["id"], position)) == PNG_BYTES
    names = [item["name"] for item in (await api.client.get(
        f"/jobs/{retry['id']}", headers=api.auth(user))).json()["items"]]
    assert names == [f"img-{index}.png" for index in FAILED]

    executed = await api.client.post(f"/jobs/{retry['id']}/execute", headers=api.auth(user))
    assert executed.status_code == 202 and executed.json()["status"] == "queued"
    for position in range(3):
        await report_item(api, retry["id"], user, position)
    done = (await api.client.get(f"/jobs/{retry['id']}", headers=api.auth(user))).json()
    assert (done["status"], done["charged"], done["retry_of"]) == ("done", 3, job_id)
    credits = (await me(api, user))["credits"]
    assert credits["spent"] - spent_before == 3 and credits["reserved"] == 0
    assert credits["available"] == 20 - 5 - 3


async def test_a_retry_with_an_idempotency_key_makes_one_job(any_api: Api) -> None:
    api, user = any_api, any_api.user()
    job_id = await finished_with_failures(api, user)
    first = await post_retry(api, user, job_id, **{"Idempotency-Key": "retry-1"})
    again = await post_retry(api, user, job_id, **{"Idempotency-Key": "retry-1"})
    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["idempotent_replay"] is True
    assert (await me(api, user))["credits"]["reserved"] == 3  # held once
    other = await finished_with_failures(api, user, new_user=False)
    reused = await post_retry(api, user, other, **{"Idempotency-Key": "retry-1"})
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
    someone_elses = await finished_with_failures(api, api.user())
    hidden = await post_retry(api, user, someone_elses, **{"Idempotency-Key": "retry-1"})
    assert hidden.status_code == 404  # another user's job is never found, key or not


async def test_a_job_without_failed_items_is_nothing_to_retry(any_api: Api) -> None:
    api, user = any_api, any_api.user()
    job_id = await finished_with_failures(api, user, failed=(), n=2)
    response = await post_retry(api, user, job_id)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "nothing_to_retry"


async def test_a_live_job_is_not_retried(any_api: Api) -> None:
    api, user = any_api, any_api.user()
    job = await queued_job(api, user, 2)
    response = await post_retry(api, user, job["id"])
    assert response.status_code == 409 and response.json()["code"] == "invalid_transition"
    assert (await post_retry(api, api.user(), job["id"])).status_code == 404


async def test_a_retry_after_the_retry_window_is_410_and_the_kept_inputs_go(
    any_api: Api, rt: Runtime,
) -> None:
    api, user = any_api, any_api.user()
    job_id = await finished_with_failures(api, user)
    await flush_once(rt.core, rt.sessions, api.settings, storage=rt.storage)
    # The flush deleted the inputs of the items that succeeded, kept the failed ones'.
    assert await rt.storage.missing([input_key(job_id, i) for i in range(8)]) == [
        i for i in range(8) if i not in FAILED]
    async with rt.sessions() as session, session.begin():
        await session.execute(update(JobLog).where(JobLog.id == job_id).values(
            finished_at=utcnow() - timedelta(seconds=api.settings.retry_window + 1)))
    late = await post_retry(api, user, job_id)
    assert late.status_code == 410, late.text
    assert late.json()["code"] == "inputs_expired"

    await flush_once(rt.core, rt.sessions, api.settings, storage=rt.storage)
    assert await rt.storage.missing([input_key(job_id, i) for i in FAILED]) == [0, 1, 2]
    assert (await me(api, user))["credits"]["reserved"] == 0  # nothing was held


async def test_inputs_gone_from_storage_are_410(any_api: Api, rt: Runtime) -> None:
    api, user = any_api, any_api.user()
    job_id = await finished_with_failures(api, user)
    await rt.storage.delete([input_key(job_id, FAILED[1])])
    response = await post_retry(api, user, job_id)
    assert response.status_code == 410 and response.json()["code"] == "inputs_expired"


async def test_the_client_retries_the_failed_items(embedded_api: Api) -> None:
    from service.client import AsyncTollgate, ProblemError

    api, user = embedded_api, embedded_api.user()
    job_id = await finished_with_failures(api, user)
    async with AsyncTollgate(api.url, api.token(user)) as tg:
        retry = await tg.retry(job_id, idempotency_key="client-retry")
        assert (retry.retry_of, retry.status, retry.total_items) == (job_id, "uploaded", 3)
        assert (await tg.retry(job_id, idempotency_key="client-retry")).id == retry.id
        with pytest.raises(ProblemError) as refused:
            await tg.retry(retry.id)  # not finished yet
        assert refused.value.code == "invalid_transition"
