"""Webhooks over real HTTP: a real API, real Redis and PostgreSQL, and a real receiver."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.flusher.loop import run_flusher_with_requeue
from service.flusher.webhooks import WebhookSender
from service.jobs.deliveries import sender_client
from service.jobs.views import webhook_job_view
from service.runtime import open_runtime
from service.settings import Settings
from service.state.due import DueIndex
from service.state.outbox import Outbox
from tests.api.conftest import SECRET, Api
from tests.api.flow import callback, create_job, report_item, upload_all
from tests.api.receiver import Hang, Receiver, verify

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"webhook_allow_private": True, "webhook_timeout": TIMEOUT_S}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
async def sender(api: Api) -> AsyncIterator[WebhookSender]:
    """A delivery pass as the flusher runs it, on a Runtime of its own."""
    rt = await open_runtime(api.settings, SECRET)

    async def view(owner: str, job_id: str) -> dict[str, Any] | None:
        return await webhook_job_view(rt, owner, job_id)

    client = sender_client(api.settings)
    yield WebhookSender(Outbox(rt.core), api.settings, view, client)
    await client.aclose()
    await rt.close()


async def running_job(api: Api, user: str, receiver: Receiver, events: list[str],
                      n: int = 2) -> dict[str, Any]:
    job = await create_job(api, user, n, webhook={"url": receiver.url, "events": events})
    await upload_all(job)
    for step, code in (("confirm-upload", 200), ("execute", 202)):
        response = await api.client.post(f"/jobs/{job['id']}/{step}", headers=api.auth(user))
        assert response.status_code == code, response.text
    started = await callback(api, job["id"], user, idempotency_key="start", event="started")
    assert started.status_code == 200, started.text
    return job


async def secret_of(api: Api, user: str) -> str:
    response = await api.client.get("/me/webhook-secret", headers=api.auth(user))
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    return secret


async def log_of(api: Api, user: str, job_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/jobs/{job_id}/webhooks", headers=api.auth(user))
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def payloads(receiver: Receiver) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in receiver.requests]


async def test_events_are_signed_delivered_and_logged(api: Api, receiver: Receiver) -> None:
    user = api.user()
    job = await running_job(api, user, receiver, ["started", "progress", "completed"])
    await report_item(api, job["id"], user, 0)
    await report_item(api, job["id"], user, 1, ok=False)
    # The flusher delivers, in-process here: one pass after the job finished.
    await run_flusher_with_requeue(api.settings, once=True)

    secret = await secret_of(api, user)
    assert secret.startswith("whsec_")
    assert receiver.requests and all(verify(secret, r) for r in receiver.requests)
    by_type = {p["type"]: p for p in payloads(receiver)}
    assert {"job.started", "job.progress", "job.completed"} <= set(by_type)
    assert by_type["job.started"]["data"]["status"] == "running"
    assert by_type["job.progress"]["data"]["done_items"] == 1
    completed = by_type["job.completed"]["data"]
    assert completed["id"] == job["id"] and completed["status"] == "done"
    assert (completed["done_items"], completed["failed_items"]) == (1, 1)
    assert completed["links"]["self"] == f"{api.url}/jobs/{job['id']}"

    log = {entry["id"]: entry for entry in await log_of(api, user, job["id"])}
    sent_ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert sent_ids <= set(log)
    for delivery_id in sent_ids:
        assert log[delivery_id]["attempts"] == 1 and log[delivery_id]["last_status"] == 200
        assert log[delivery_id]["delivered_at"] and log[delivery_id]["next_attempt_at"] is None

    # Signatures follow the secret: after a rotation, old ones no longer verify.
    rotated = await api.client.post("/me/webhook-secret/rotate", headers=api.auth(user))
    assert rotated.status_code == 200 and rotated.json()["secret"] != secret
    assert not verify(rotated.json()["secret"], receiver.requests[0])
    assert await secret_of(api, user) == rotated.json()["secret"]

    other = await api.client.get(f"/jobs/{job['id']}/webhooks", headers=api.auth(api.user()))
    assert other.status_code == 404


async def test_a_failing_receiver_gets_retries_with_the_same_id(
    api: Api, receiver: Receiver, sender: WebhookSender
) -> None:
    user = api.user()
    receiver.plan = [500]
    job = await running_job(api, user, receiver, ["completed"], n=1)
    await report_item(api, job["id"], user, 0)
    assert await sender.deliver_once() == 1
    [entry] = await log_of(api, user, job["id"])
    assert entry["attempts"] == 1 and entry["last_status"] == 500
    assert entry["delivered_at"] is None
    next_at = datetime.fromisoformat(entry["next_attempt_at"].replace("Z", "+00:00"))
    assert 0 < (next_at - datetime.now(UTC)).total_seconds() <= 10  # the first retry

    deadline = time.monotonic() + 12
    while len(receiver.requests) < 2 and time.monotonic() < deadline:
        await sender.deliver_once()
        await asyncio.sleep(0.25)
    first, second = receiver.requests
    assert second.at - first.at < 10
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == entry["id"]
    assert first.body == second.body
    # Rebuilt from the job for each attempt: the record in Redis keeps no body.
    [raw] = (await sender.outbox.log(job["id"])).values()
    assert "body" not in json.loads(raw)
    [entry] = await log_of(api, user, job["id"])
    assert entry["attempts"] == 2 and entry["last_status"] == 200 and entry["delivered_at"]


async def test_a_receiver_that_hangs_is_timed_out_and_retried(
    api: Api, receiver: Receiver, sender: WebhookSender
) -> None:
    user = api.user()
    receiver.plan = [Hang(TIMEOUT_S * 4)]
    job = await running_job(api, user, receiver, ["completed"], n=1)
    await report_item(api, job["id"], user, 0)
    started = time.monotonic()
    await sender.deliver_once()
    assert time.monotonic() - started < TIMEOUT_S + 2  # not the receiver's 4 s
    [entry] = await log_of(api, user, job["id"])
    assert entry["attempts"] == 1 and entry["last_status"] is None
    assert entry["delivered_at"] is None and entry["next_attempt_at"] is not None

    deadline = time.monotonic() + 12
    while not (await log_of(api, user, job["id"]))[0]["delivered_at"]:
        assert time.monotonic() < deadline, "the retry never came"
        await sender.deliver_once()
        await asyncio.sleep(0.25)
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1


def start_flusher(settings: Settings) -> subprocess.Popen[bytes]:
    """`tollgate flusher` in a process of its own, on the test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"TOLLGATE_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-m", "service.cli.main", "flusher"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_a_killed_flusher_loses_no_delivery(api: Api, receiver: Receiver) -> None:
    user = api.user()
    receiver.plan = [Hang(TIMEOUT_S * 4)]
    job = await running_job(api, user, receiver, ["completed"], n=1)
    await report_item(api, job["id"], user, 0)
    flusher = start_flusher(api.settings)
    try:
        # Killed while the receiver holds its request: the attempt's outcome is never written.
        arrived = await asyncio.to_thread(receiver.arrived.wait, 30)
        assert arrived, "the flusher never delivered"
        os.kill(flusher.pid, signal.SIGKILL)
        flusher.wait(timeout=10)
    finally:
        if flusher.poll() is None:
            flusher.kill()
            flusher.wait(timeout=10)
    [entry] = await log_of(api, user, job["id"])
    assert entry["attempts"] == 0 and entry["delivered_at"] is None

    # A new flusher finds the delivery again once the dead one's claim ran out.
    rerun = start_flusher(api.settings)
    try:
        deadline = time.monotonic() + 40
        while not (await log_of(api, user, job["id"]))[0]["delivered_at"]:
            assert time.monotonic() < deadline, "the delivery was lost with the flusher"
            await asyncio.sleep(0.5)
    finally:
        rerun.send_signal(signal.SIGTERM)
        rerun.wait(timeout=20)
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(ids) == 2 and len(set(ids)) == 1


async def test_the_address_is_checked_again_at_delivery(
    api: Api, receiver: Receiver, sender: WebhookSender
) -> None:
    user = api.user()
    job = await running_job(api, user, receiver, ["completed"], n=1)
    await report_item(api, job["id"], user, 0)
    # The URL passed at creation; by delivery time it is refused (as when DNS now answers
    # with a private address): nothing reaches it, and the attempt counts as failed.
    sender.settings = api.settings.model_copy(update={"webhook_allow_private": False})
    await sender.deliver_once()
    assert receiver.requests == []
    [entry] = await log_of(api, user, job["id"])
    assert entry["attempts"] == 1 and entry["last_status"] is None


async def test_a_delivery_pass_reads_only_the_buckets_in_use(
    api: Api, receiver: Receiver, sender: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = api.user()
    job = await running_job(api, user, receiver, ["completed"], n=1)
    await report_item(api, job["id"], user, 0)
    visited: list[int] = []
    deliver_bucket = sender.deliver_bucket

    async def counted(bucket: int, limit: int = 200) -> int:
        visited.append(bucket)
        return await deliver_bucket(bucket, limit)

    monkeypatch.setattr(sender, "deliver_bucket", counted)
    assert await sender.deliver_once() == 1
    in_use = await DueIndex(sender.outbox.core).buckets_in_use()
    assert visited == in_use
    assert sender.outbox.core.keys.bucket_of_job(job["id"]) in visited
    assert len(visited) < api.settings.buckets  # not every bucket
