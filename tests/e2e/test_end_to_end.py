"""Jobs run by real `tollgate worker` processes, settle exactly, and land in SQL history."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import select

from service.history.models import JobLog, LedgerEntry
from service.runtime import open_runtime
from tests.api.conftest import SECRET, Api
from tests.api.flow import me, queued_job
from tests.api.history import flush_everything
from tests.api.scheduling import dispatching, drain
from tests.e2e.conftest import Workers

SLOW = "tests.e2e.slow_processor:one_per_second"
PASSTHROUGH = "workers.processors.noop:passthrough"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"lease_ttl": 3, "batch_size": 2}


async def job_view(api: Api, user: str, job_id: str) -> dict[str, Any]:
    response = await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_for(api: Api, user: str, job_id: str, predicate: Any, within: float = 60
                   ) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        view = await job_view(api, user, job_id)
        if predicate(view):
            return view
        assert time.monotonic() < deadline, f"job never got there: {view}"
        await asyncio.sleep(0.2)


async def redis_keys_of(api: Api, job_id: str) -> list[str]:
    rt = await open_runtime(api.settings, SECRET)
    try:
        keys = [key async for key in rt.core.client.scan_iter(
            match=f"{api.settings.key_prefix}:*{job_id}*")]
        for index in ("holds", "leases", "queued", "flush"):
            bucket = rt.core.job_keys(job_id).bucket
            if await rt.core.client.zscore(getattr(bucket, index), job_id) is not None:
                keys.append(f"{index} index")
        return keys
    finally:
        await rt.close()


async def sql_history(api: Api, job_id: str) -> tuple[JobLog | None, list[LedgerEntry]]:
    rt = await open_runtime(api.settings, SECRET)
    try:
        async with rt.sessions() as session:
            row = await session.get(JobLog, job_id)
            ledger = (await session.scalars(
                select(LedgerEntry).where(LedgerEntry.job_id == job_id))).all()
        return row, list(ledger)
    finally:
        await rt.close()


def assert_balanced(credits: dict[str, int]) -> None:
    assert credits["granted"] == credits["available"] + credits["reserved"] + credits["spent"]


async def test_a_job_runs_to_done_settles_flushes_and_leaves_no_redis_keys(
        api: Api, workers: Workers) -> None:
    user = api.user()
    job = await queued_job(api, user, 5)
    await asyncio.to_thread(workers.run_burst, PASSTHROUGH)
    view = await job_view(api, user, job["id"])
    assert (view["status"], view["done_items"], view["charged"], view["refunded"]) == (
        "done", 5, 5, 0)
    await flush_everything(api)
    assert await redis_keys_of(api, job["id"]) == []
    row, ledger = await sql_history(api, job["id"])
    assert row is not None and row.state == "done" and row.charged == 5
    assert sorted((e.kind, e.amount) for e in ledger) == [
        ("charge", -5), ("hold", -5), ("release", 5)]
    history = await job_view(api, user, job["id"])
    assert [item["status"] for item in history["items"]] == ["ok"] * 5
    credits = (await me(api, user))["credits"]
    assert credits.pop("grants")[0]["remaining"] == 5  # the signup grant, half drawn
    assert credits == {"available": 5, "reserved": 0, "spent": 5, "granted": 10}


async def test_failed_items_are_not_charged(api: Api, workers: Workers) -> None:
    user = api.user()
    job = await queued_job(api, user, 4)
    await asyncio.to_thread(workers.run_burst, "workers.processors.noop:fail_odd")
    view = await job_view(api, user, job["id"])
    assert (view["status"], view["done_items"], view["failed_items"]) == ("done", 2, 2)
    assert (view["charged"], view["refunded"]) == (2, 2)
    assert [i["status"] for i in view["items"]] == ["ok", "failed", "ok", "failed"]
    assert "odd item index" in view["items"][1]["error"]
    assert_balanced((await me(api, user))["credits"])


async def test_a_killed_worker_ends_in_a_settled_refunded_job(api: Api, workers: Workers) -> None:
    user = api.user()
    job = await queued_job(api, user, 6)
    proc = workers.start(SLOW, burst=False, TOLLGATE_TEST_ITEM_SECONDS="1")
    async with dispatching(api.settings):
        await wait_for(api, user, job["id"], lambda v: v["done_items"] >= 2)
    workers.kill(proc)
    before = await job_view(api, user, job["id"])
    assert before["status"] == "running"
    await asyncio.sleep(api.settings.lease_ttl + 1)  # the lease runs out: nobody renews it
    await flush_everything(api)
    view = await job_view(api, user, job["id"])
    assert view["status"] == "failed" and view["reason"] == "lease_expired"
    assert view["charged"] == view["done_items"] == before["done_items"]
    assert view["refunded"] == 6 - view["done_items"]
    credits = (await me(api, user))["credits"]
    assert credits["reserved"] == 0 and credits["spent"] == view["charged"]
    assert_balanced(credits)


async def test_cancel_while_running_stops_charging(api: Api, workers: Workers) -> None:
    user = api.user()
    job = await queued_job(api, user, 6)
    proc = workers.start(SLOW, burst=False, TOLLGATE_TEST_ITEM_SECONDS="0.5")
    async with dispatching(api.settings):
        await wait_for(api, user, job["id"], lambda v: v["done_items"] >= 1)
    canceled = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    assert canceled.status_code == 200
    charged = canceled.json()["charged"]
    await asyncio.sleep(3)  # the worker goes on a little and is refused
    workers.kill(proc)
    view = await job_view(api, user, job["id"])
    assert view["status"] == "canceled" and view["charged"] == charged
    assert view["done_items"] == charged
    credits = (await me(api, user))["credits"]
    assert credits["spent"] == charged and credits["reserved"] == 0
    assert_balanced(credits)


async def test_a_queued_job_lost_by_the_queue_is_enqueued_again_and_finishes(
        api: Api, workers: Workers) -> None:
    import redis as sync_redis
    from rq.job import Job

    from service.contract import rq_job_id
    from service.flusher.loop import run_flusher_with_requeue

    user = api.user()
    job = await queued_job(api, user, 2)
    assert await drain(api.settings) == 1  # its batch is handed to RQ
    # RQ's Redis loses it (a restart without persistence): RQ never heard of the job.
    connection = sync_redis.Redis.from_url(api.settings.queue_redis_url or "")
    Job.fetch(rq_job_id(job["id"], 0), connection=connection).delete()
    connection.delete(f"rq:queue:{api.settings.queue_name}")
    settings = api.settings.model_copy(update={"requeue_after": 1})
    await asyncio.sleep(1.2)
    await run_flusher_with_requeue(settings, once=True)
    assert Job.exists(rq_job_id(job["id"], 0), connection=connection)
    connection.close()
    await asyncio.to_thread(workers.run_burst, PASSTHROUGH)
    view = await job_view(api, user, job["id"])
    assert (view["status"], view["charged"]) == ("done", 2)
