"""A batch whose job is canceled and flushed while it runs, against the real API over HTTP.

The flushed job answers its next callback 404 `not_found`; the contract says that means
"closed", like 409 `invalid_transition`, so the batch stops quietly instead of failing in RQ.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import redis
from rq.job import Job

from service.contract import SERIALIZER, rq_job_id
from tests.api.conftest import Api, api, real_settings, settings_overrides  # noqa: F401
from tests.api.flow import callback, me, queued_job
from tests.api.history import flush_everything
from tests.api.scheduling import drain
from workers.callbacks import RetryingClient
from workers.jobs import Batch, run_batch
from workers.processors import Item, Output
from workers.processors.noop import passthrough


async def the_batch(served: Api, job_id: str) -> Batch:
    """The batch payload the API enqueued, as a worker would take it off the queue."""
    await drain(served.settings)  # the dispatcher hands the waiting batches to RQ
    settings = served.settings
    connection = redis.Redis.from_url(settings.queue_redis_url or settings.redis_url or "")
    try:
        job = Job.fetch(rq_job_id(job_id, 0), connection=connection, serializer=SERIALIZER)
        return Batch.from_payload(job.args[0])
    finally:
        connection.close()


async def test_a_batch_whose_job_was_canceled_and_flushed_stops_as_closed(api: Api) -> None:  # noqa: F811
    user = api.user()
    job = await queued_job(api, user, 2)
    batch = await the_batch(api, job["id"])
    working, resume = threading.Event(), threading.Event()

    def held(items: list[Item]) -> list[Output]:
        working.set()
        assert resume.wait(timeout=60), "the test never let the processor finish"
        return passthrough(items)

    outcome: dict[str, Any] = {}

    def worker() -> None:
        with httpx.Client(timeout=10) as client:
            try:
                outcome["summary"] = run_batch(batch, held, RetryingClient(
                    client, attempts=2, sleep=lambda _: None))
            except Exception as exc:  # what RQ would see: the batch failed
                outcome["error"] = exc

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    assert await asyncio.to_thread(working.wait, 30), "the batch never reached its processor"

    canceled = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    assert canceled.status_code == 200, canceled.text
    await flush_everything(api)
    # The job is gone from Redis: its callbacks now answer 404 not_found.
    gone = await callback(api, job["id"], user, idempotency_key="probe", event="heartbeat")
    assert (gone.status_code, gone.json()["code"]) == (404, "not_found"), gone.text

    resume.set()
    await asyncio.to_thread(thread.join, 60)
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary["stopped"] is not None and summary["stopped"].startswith("job closed")
    assert (summary["ok"], summary["failed"]) == (0, 0)
    credits = (await me(api, user))["credits"]
    assert (credits["spent"], credits["reserved"]) == (0, 0)
