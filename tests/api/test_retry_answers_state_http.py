"""A retried confirm or execute answers the job where it is, never a 409 for the client's own
earlier call (docs/concepts.md, the state machine); a true conflict stays 409. On the embedded
fakeredis, a standalone Redis and a Redis Cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq.job import Job

import service.state.clients as clients
from service.contract import rq_job_id
from service.runtime import open_runtime
from service.state.keys import KeySpace
from service.state.sched import SchedState
from tests.api.conftest import SECRET, Api
from tests.api.flow import callback, create_job, queued_job, report_item, upload_all
from tests.api.history import flush_everything


@pytest.fixture
def rq_redis(any_api: Api) -> Iterator[Any]:
    """The Redis RQ keeps its jobs in for this API (the embedded one, or a standalone)."""
    url = any_api.settings.queue_redis_url or any_api.settings.redis_url
    if url is None:
        yield clients.queue_redis(any_api.settings)
        return
    connection = redis.Redis.from_url(url)
    yield connection
    connection.close()


async def post(api: Api, user: str, job_id: str, action: str) -> tuple[int, dict[str, Any]]:
    response = await api.client.post(f"/jobs/{job_id}/{action}", headers=api.auth(user))
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def test_execute_again_answers_queued_running_done_and_flushed(any_api: Api) -> None:
    api, user = any_api, any_api.user()
    job_id = (await queued_job(api, user, 2))["id"]
    status, view = await post(api, user, job_id, "execute")
    assert (status, view["status"], view["queue_position"]) == (202, "queued", 0)

    started = await callback(api, job_id, user, idempotency_key="s", event="started")
    assert started.status_code == 200, started.text
    status, view = await post(api, user, job_id, "execute")
    assert (status, view["status"]) == (202, "running"), view

    await report_item(api, job_id, user, 0)
    await report_item(api, job_id, user, 1, ok=False)
    status, view = await post(api, user, job_id, "execute")
    assert (status, view["status"], view["charged"], view["refunded"]) == (202, "done", 1, 1)
    assert [item["status"] for item in view["items"]] == ["ok", "failed"]

    await flush_everything(api)  # now only in SQL history
    status, view = await post(api, user, job_id, "execute")
    assert (status, view["id"], view["status"], view["charged"]) == (202, job_id, "done", 1)


async def test_execute_again_of_a_running_job_enqueues_nothing(any_api: Api,
                                                               rq_redis: Any) -> None:
    api, user = any_api, any_api.user()
    job_id = (await queued_job(api, user, 1))["id"]
    await callback(api, job_id, user, idempotency_key="s", event="started")
    status, view = await post(api, user, job_id, "execute")
    assert (status, view["status"]) == (202, "running")
    assert not Job.exists(rq_job_id(job_id, 0), connection=rq_redis)


async def test_an_execute_whose_enqueue_failed_is_dispatched_by_its_retry(
    any_api: Api, rq_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first call queued the job, then could not reach the dispatch order (a 503): the
    retry places it now rather than leaving it to the flusher's TOLLGATE_REQUEUE_AFTER."""
    api, user = any_api, any_api.user()
    job = await create_job(api, user, 1)
    await upload_all(job)
    assert (await post(api, user, job["id"], "confirm-upload"))[0] == 200

    async def order_away(*_: Any, **__: Any) -> None:
        raise redis.exceptions.ConnectionError("the order's node went away")

    order = KeySpace(api.settings.key_prefix, api.settings.buckets).sched(
        api.settings.queue_name).order
    with monkeypatch.context() as patched:
        patched.setattr(SchedState, "place", order_away)
        status, problem = await post(api, user, job["id"], "execute")
    assert (status, problem["code"]) == (503, "unavailable")
    rt = await open_runtime(api.settings, SECRET)
    try:
        assert await rt.core.client.zscore(order, job["id"]) is None
        read = await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))
        assert read.json()["status"] == "queued"  # the transition happened
        status, view = await post(api, user, job["id"], "execute")
        assert (status, view["status"]) == (202, "queued")
        assert await rt.core.client.zscore(order, job["id"]) is not None
    finally:
        await rt.close()


async def test_execute_before_confirm_stays_a_conflict(any_api: Api) -> None:
    api, user = any_api, any_api.user()
    job = await create_job(api, user, 1)
    status, problem = await post(api, user, job["id"], "execute")
    assert (status, problem["code"], problem["job_status"]) == (409, "invalid_transition",
                                                               "created")


async def test_confirm_again_answers_uploaded_queued_done_and_flushed(any_api: Api) -> None:
    api, user = any_api, any_api.user()
    job = await create_job(api, user, 1)
    await upload_all(job)
    job_id = job["id"]
    for _ in range(2):
        status, view = await post(api, user, job_id, "confirm-upload")
        assert (status, view["status"]) == (200, "uploaded")

    assert (await post(api, user, job_id, "execute"))[0] == 202
    status, view = await post(api, user, job_id, "confirm-upload")
    assert (status, view["status"], view["queue_position"]) == (200, "queued", 0)

    await report_item(api, job_id, user, 0)
    status, view = await post(api, user, job_id, "confirm-upload")
    assert (status, view["status"], view["charged"]) == (200, "done", 1)

    await flush_everything(api)
    status, view = await post(api, user, job_id, "confirm-upload")
    assert (status, view["id"], view["status"], view["charged"]) == (200, job_id, "done", 1)


async def test_confirm_and_execute_of_a_canceled_job_answer_canceled(any_api: Api) -> None:
    api, user = any_api, any_api.user()
    job = await create_job(api, user, 1)
    assert (await post(api, user, job["id"], "cancel"))[0] == 200
    for action, code in (("confirm-upload", 200), ("execute", 202), ("cancel", 200)):
        status, view = await post(api, user, job["id"], action)
        assert (status, view["status"]) == (code, "canceled"), action


async def test_confirm_with_uploads_missing_stays_a_conflict(any_api: Api) -> None:
    api, user = any_api, any_api.user()
    job = await create_job(api, user, 2)
    await upload_all(job, skip=frozenset({1}))
    status, problem = await post(api, user, job["id"], "confirm-upload")
    assert (status, problem["code"], problem["missing"]) == (409, "uploads_missing", [1])


async def test_a_retry_on_another_users_job_is_404(any_api: Api) -> None:
    api, user = any_api, any_api.user()
    job_id = (await queued_job(api, user, 1))["id"]
    for action in ("confirm-upload", "execute"):
        status, problem = await post(api, api.user(), job_id, action)
        assert (status, problem["code"]) == (404, "not_found"), action
