"""Each webhook's `data` is the job as it was at its event (issue 17, finding 8: a
`job.started` delivered after the end carried the final charge, end time and reason).

Every delivery here is rendered after the job ended, by a sender on its own Runtime or by
`tollgate flusher --once` (which flushes first, so the view comes from SQL); its `data`
must equal the job view read over HTTP right after that event, field for field. On Redis,
the embedded fakeredis and a Cluster."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from service.flusher.loop import run_flusher_with_requeue
from service.flusher.webhooks import WebhookSender
from service.jobs.deliveries import sender_client
from service.jobs.views import webhook_job_view
from service.runtime import open_runtime
from service.state.outbox import Outbox
from tests.api.conftest import SECRET, Api
from tests.api.flow import callback, create_job, report_item, upload_all
from tests.api.receiver import Receiver

EVENTS = ["started", "progress", "completed"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _private_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Receivers on loopback: set before any_api's server reads its settings."""
    monkeypatch.setenv("TOLLGATE_WEBHOOK_ALLOW_PRIVATE", "true")


async def view_now(api: Api, user: str, job_id: str) -> dict[str, Any]:
    response = await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    view.pop("items", None)  # a delivery carries the view without items
    return view


async def started_job(api: Api, user: str, receiver: Receiver, n: int
                      ) -> tuple[str, dict[str, Any]]:
    """A job of `n` items that has just started; its view at that moment."""
    job = await create_job(api, user, n, webhook={"url": receiver.url, "events": EVENTS})
    await upload_all(job)
    for step, code in (("confirm-upload", 200), ("execute", 202)):
        response = await api.client.post(f"/jobs/{job['id']}/{step}", headers=api.auth(user))
        assert response.status_code == code, response.text
    started = await callback(api, job["id"], user, idempotency_key="start", event="started")
    assert started.status_code == 200, started.text
    return job["id"], await view_now(api, user, job["id"])


async def deliver(api: Api, flushed: bool) -> None:
    """Every due delivery, after the job ended: from SQL after a flush, or from Redis."""
    if flushed:
        await run_flusher_with_requeue(api.settings, once=True)
        return
    rt = await open_runtime(api.settings, SECRET)

    async def view(owner: str, job_id: str) -> dict[str, Any] | None:
        return await webhook_job_view(rt, owner, job_id)

    client = sender_client(api.settings)
    try:
        await WebhookSender(Outbox(rt.core), api.settings, view, client).deliver_once()
    finally:
        await client.aclose()
        await rt.close()


def delivered(receiver: Receiver, job_id: str) -> dict[str, dict[str, Any]]:
    """The job's deliveries by type (one of each here)."""
    payloads = [json.loads(r.body) for r in receiver.requests]
    by_type = {p["type"]: p for p in payloads if p["data"]["id"] == job_id}
    assert len(by_type) == len([p for p in payloads if p["data"]["id"] == job_id])
    return by_type


# A flusher pass over every bucket (1,024 on the embedded set-up): 2-4 s, not the fast lane.
@pytest.fixture(params=[False, pytest.param(True, marks=pytest.mark.slow)],
                ids=["live", "flushed"])
def flushed(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


@pytest.fixture
async def finished_job(any_api: Api, receiver: Receiver, flushed: bool
                       ) -> AsyncIterator[tuple[dict[str, dict[str, Any]],
                                                dict[str, dict[str, Any]]]]:
    """A 2-item job that started, made progress (1 done), then ended done (the second
    failed), delivered after the end: (payloads by type, the view right after each)."""
    api, user = any_api, any_api.user()
    job_id, at_start = await started_job(api, user, receiver, 2)
    await report_item(api, job_id, user, 0)
    at_progress = await view_now(api, user, job_id)
    await report_item(api, job_id, user, 1, ok=False)
    at_end = await view_now(api, user, job_id)
    assert (at_end["status"], at_end["charged"]) == ("done", 1)
    await deliver(api, flushed)
    yield delivered(receiver, job_id), {"job.started": at_start, "job.progress": at_progress,
                                        "job.completed": at_end}


async def test_job_started_shows_the_job_as_it_started(
    finished_job: tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]],
) -> None:
    payloads, views = finished_job
    data = payloads["job.started"]["data"]
    # The measured leak: the final charge, end time and reason in an earlier event.
    assert (data["status"], data["done_items"], data["charged"]) == ("running", 0, 0)
    assert data["finished_at"] is None and data["reason"] is None
    assert data == views["job.started"]
    assert payloads["job.started"]["timestamp"] == data["started_at"]


async def test_job_progress_shows_the_counts_of_its_moment(
    finished_job: tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]],
) -> None:
    payloads, views = finished_job
    data = payloads["job.progress"]["data"]
    assert (data["status"], data["done_items"], data["failed_items"]) == ("running", 1, 0)
    assert (data["charged"], data["refunded"], data["finished_at"]) == (0, 0, None)
    assert data == views["job.progress"]


async def test_job_completed_shows_the_final_job(
    finished_job: tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]],
) -> None:
    payloads, views = finished_job
    assert payloads["job.completed"]["data"] == views["job.completed"]


@pytest.mark.parametrize("end", ["failed", "canceled"])
async def test_job_completed_of_a_failed_or_canceled_job_shows_its_end(
    any_api: Api, receiver: Receiver, end: str,
) -> None:
    api, user = any_api, any_api.user()
    job_id, at_start = await started_job(api, user, receiver, 2)
    if end == "failed":
        await report_item(api, job_id, user, 0, ok=False)
        await report_item(api, job_id, user, 1, ok=False)
    else:
        response = await api.client.post(f"/jobs/{job_id}/cancel", headers=api.auth(user))
        assert response.status_code == 200, response.text
    at_end = await view_now(api, user, job_id)
    assert at_end["status"] == end
    await deliver(api, flushed=False)
    payloads = delivered(receiver, job_id)
    assert payloads["job.completed"]["data"] == at_end
    assert payloads["job.started"]["data"] == at_start
