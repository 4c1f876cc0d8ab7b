"""Issue 23 over HTTP against the real API (Redis, PostgreSQL, S3): billable failures charged
for a model with bill_input_errors, a model's max_item_bytes, whole-float integer params, a
running batch stopped within about a second of a cancel, and a canceled job's unpaid outputs
deleted at its flush."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from rq.job import Job

from service.contract import SERIALIZER, input_key, output_key, rq_job_id
from service.flusher.loop import flush_once
from service.runtime import open_runtime
from tests.api.conftest import SECRET, Api, api, real_settings  # noqa: F401
from tests.api.flow import PNG_BYTES, create_job, me, upload_all
from tests.api.scheduling import drain
from workers.callbacks import RetryingClient
from workers.jobs import Batch, run_batch
from workers.processors import Item, Output
from workers.processors.noop import passthrough

pytestmark = pytest.mark.redis

PRICE = 5
MODELS = """
[models.billed]
processor = "workers.processors.noop:passthrough"
price_per_item = {price}
queue = "{prefix}-billed"
bill_input_errors = true
max_item_bytes = 1000
default = true
params_schema = {{ type = "object", properties = {{ size = {{ type = "integer" }} }} }}

[models.free]
processor = "workers.processors.noop:passthrough"
price_per_item = {price}
queue = "{prefix}-free"
"""


@pytest.fixture
def settings_overrides(tmp_path: Path, key_prefix: str) -> dict[str, Any]:
    path = tmp_path / "models.toml"
    path.write_text(MODELS.format(price=PRICE, prefix=key_prefix))
    return {"models": str(path), "signup_credits": 1000}


async def the_batch(served: Api, job_id: str) -> Batch:
    """The batch the API enqueued, as a worker takes it off the queue."""
    await drain(served.settings)  # the dispatcher hands the waiting batches to RQ
    connection = redis.Redis.from_url(served.settings.redis_url or "")
    try:
        job = Job.fetch(rq_job_id(job_id, 0), connection=connection, serializer=SERIALIZER)
        return Batch.from_payload(job.args[0])
    finally:
        connection.close()


async def queued(served: Api, user: str, n: int, **extra: Any) -> dict[str, Any]:
    job = await create_job(served, user, n, **extra)
    await upload_all(job)
    for step, status in (("confirm-upload", 200), ("execute", 202)):
        response = await served.client.post(f"/jobs/{job['id']}/{step}",
                                            headers=served.auth(user))
        assert response.status_code == status, response.text
    return job


async def run_in_thread(batch: Batch, processor: Any) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        with httpx.Client(timeout=10) as client:
            return run_batch(batch, processor, RetryingClient(client, sleep=lambda _: None))

    return await asyncio.to_thread(work)


def ok_billable_free(items: list[Item]) -> list[Output]:
    """Item 0 a result, item 1 a failure the input caused after the work, item 2 free."""
    by_index = {0: Output(0, items[0].data, "image/png"),
                1: Output.failed(1, "truncated image", billable=True),
                2: Output.failed(2, "cannot identify image")}
    return [by_index[item.index] for item in items]


@pytest.mark.parametrize(("model", "charged"), [("billed", 2 * PRICE), ("free", PRICE)])
async def test_billable_failures_are_charged_only_for_a_model_that_bills_them(
    api: Api, model: str, charged: int  # noqa: F811
) -> None:
    user = api.user()
    job = await queued(api, user, 3, model=model)
    summary = await run_in_thread(await the_batch(api, job["id"]), ok_billable_free)
    assert (summary["ok"], summary["failed"]) == (1, 2)
    view = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert (view["status"], view["charged"], view["refunded"]) == (
        "done", charged, 3 * PRICE - charged)
    credits = (await me(api, user))["credits"]
    assert (credits["spent"], credits["reserved"]) == (charged, 0)


async def test_an_item_over_the_models_max_item_bytes_is_refused(api: Api) -> None:  # noqa: F811
    user = api.user()
    big = {"name": "big.png", "content_type": "image/png", "size": 1001}
    refused = await api.client.post("/jobs", json={"items": [big]}, headers=api.auth(user))
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "items[0].size" and "1000" in refused.json()["detail"]
    fits = await api.client.post("/jobs", json={"items": [{**big, "size": 1000}]},
                                 headers=api.auth(user))
    assert fits.status_code == 201, fits.text


async def test_a_whole_float_integer_param_is_stored_as_an_integer(api: Api) -> None:  # noqa: F811
    user = api.user()
    job = await queued(api, user, 1, params={"size": 64.0})
    seen: list[Any] = []

    def reads_params(items: list[Item]) -> list[Output]:
        seen.extend(item.params["size"] for item in items)
        return passthrough(items)

    await run_in_thread(await the_batch(api, job["id"]), reads_params)
    assert seen == [64] and isinstance(seen[0], int)
    view = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert view["params"] == {"size": 64}
    refused = await api.client.post("/jobs", json={
        "items": [{"name": "a.png", "content_type": "image/png", "size": 10}],
        "params": {"size": 64.5}}, headers=api.auth(user))
    assert refused.status_code == 422 and refused.json()["field"] == "params.size"


async def test_a_canceled_job_stops_its_running_batch_within_about_a_second(
    api: Api,  # noqa: F811
) -> None:
    """The lease is 60 s (a heartbeat every 20 s before): the worker now learns of the
    cancel from its next renewal, at most a second later, and stops at the next item."""
    user = api.user()
    job = await queued(api, user, 10)
    batch = await the_batch(api, job["id"])
    assert batch.lease_ttl_s >= 30
    read: list[float] = []
    first = threading.Event()

    def slow(items: list[Item]) -> list[Output]:
        outputs = []
        for item in items:
            outputs.append(Output(item.index, item.data, "image/png"))
            read.append(time.monotonic())
            first.set()
            time.sleep(0.3)
        return outputs

    running = asyncio.ensure_future(run_in_thread(batch, slow))
    assert await asyncio.to_thread(first.wait, 30)
    canceled = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    assert canceled.status_code == 200, canceled.text
    at_cancel = time.monotonic()
    summary = await running
    stopped_after = time.monotonic() - at_cancel

    assert summary["stopped"] is not None and (summary["ok"], summary["failed"]) == (0, 0)
    assert stopped_after < 2.0, f"the batch ran {stopped_after:.1f} s past the cancel"
    assert len([t for t in read if t > at_cancel]) <= 5  # 1 s of 0.3 s items, and one more
    view = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert (view["status"], view["done_items"], view["charged"]) == ("canceled", 0, 0)


async def test_a_canceled_jobs_unpaid_outputs_are_deleted_at_its_flush(
    api: Api,  # noqa: F811
) -> None:
    """Item 0 was reported ok (charged: its output stays); item 1's output was uploaded by a
    worker whose report the cancel refused: nobody paid for it, nobody can reach it."""
    user = api.user()
    job = await queued(api, user, 2)
    job_id = job["id"]
    batch = await the_batch(api, job_id)
    async with httpx.AsyncClient(timeout=30) as raw:
        for spec in batch.items:
            put = await raw.put(spec.output_url, content=PNG_BYTES,
                                headers={"Content-Type": "image/png"})
            assert put.status_code in (200, 204), put.text
    reported = await api.client.post(
        f"/jobs/{job_id}/callback", headers={"Authorization": f"Bearer {batch.callback_token}"},
        json={"event": "item", "idempotency_key": "k0", "item_index": 0, "ok": True})
    assert reported.status_code == 200, reported.text
    canceled = await api.client.post(f"/jobs/{job_id}/cancel", headers=api.auth(user))
    assert canceled.status_code == 200 and canceled.json()["charged"] == PRICE

    rt = await open_runtime(api.settings, SECRET)
    try:
        await flush_once(rt.core, rt.sessions, api.settings, storage=rt.storage)
        keys = [input_key(job_id, 0), input_key(job_id, 1), output_key(job_id, 0),
                output_key(job_id, 1)]
        assert await rt.storage.missing(keys) == [0, 1, 3]  # the paid output 0 stays
    finally:
        await rt.close()
