"""Webhook redelivery and the delivery log in SQL (docs/client.md and
docs/webhooks.md): the flusher moves a job's log to SQL with the job; GET /jobs/{id}/webhooks reads
Redis, then SQL; POST .../redeliver makes one new attempt now, with a new webhook-id, signed
with the current secret (checked with the Standard Webhooks library), recorded in the log.
On Redis, the embedded fakeredis and a Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.flusher.loop import flush_once
from service.flusher.webhooks import WebhookSender
from service.history.models import WebhookDeliveryLog
from service.jobs.deliveries import sender_client
from service.jobs.views import webhook_job_view
from service.runtime import Runtime, open_runtime
from service.state.outbox import Outbox
from tests.api.conftest import SECRET, Api
from tests.api.flow import create_job, report_item, upload_all
from tests.api.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(plan=[500])  # the first attempt fails
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _private_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Receivers on loopback: set before any_api's server reads its settings."""
    monkeypatch.setenv("TOLLGATE_WEBHOOK_ALLOW_PRIVATE", "true")



async def deliveries(api: Api, user: str, job_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/jobs/{job_id}/webhooks", headers=api.auth(user))
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def finished_job_with_a_failed_delivery(api: Api, rt: Runtime, user: str,
                                              receiver: Receiver) -> tuple[str, str]:
    job = await create_job(api, user, 1, webhook={"url": receiver.url})
    await upload_all(job)
    for step in ("confirm-upload", "execute"):
        await api.client.post(f"/jobs/{job['id']}/{step}", headers=api.auth(user))
    await report_item(api, job["id"], user, 0)

    async def view(owner: str, job_id: str) -> dict[str, Any] | None:
        return await webhook_job_view(rt, owner, job_id)

    client = sender_client(api.settings)
    try:
        assert await WebhookSender(Outbox(rt.core), api.settings, view, client
                                   ).deliver_once() == 1
    finally:
        await client.aclose()
    [first] = await deliveries(api, user, job["id"])
    assert (first["attempts"], first["last_status"]) == (1, 500)
    return job["id"], first["id"]


async def arrived(receiver: Receiver, count: int) -> None:
    for _ in range(200):
        if len(receiver.requests) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(receiver.requests)} of {count} deliveries arrived")


async def forget_redis_log(rt: Runtime, job_id: str) -> None:
    """As when the log's TTL ran out in Redis: only SQL has it then."""
    await rt.core.client.delete(rt.core.job_keys(job_id).webhooks)


async def test_the_log_moves_to_sql_and_a_redelivery_verifies_under_the_rotated_secret(
    any_api: Api, rt: Runtime, receiver: Receiver,
) -> None:
    api, user = any_api, any_api.user()
    job_id, first_id = await finished_job_with_a_failed_delivery(api, rt, user, receiver)
    old_secret = (await api.client.get("/me/webhook-secret", headers=api.auth(user))
                  ).json()["secret"]
    await flush_once(rt.core, rt.sessions, api.settings, storage=rt.storage)
    async with rt.sessions() as session:
        rows = (await session.scalars(select(WebhookDeliveryLog).where(
            WebhookDeliveryLog.job_id == job_id))).all()
    assert [(row.id, row.attempts, row.last_status) for row in rows] == [(first_id, 1, 500)]
    await forget_redis_log(rt, job_id)
    [from_sql] = await deliveries(api, user, job_id)
    assert (from_sql["id"], from_sql["attempts"], from_sql["type"]) == (
        first_id, 1, "job.completed")

    rotated = await api.client.post("/me/webhook-secret/rotate", headers=api.auth(user))
    new_secret = rotated.json()["secret"]
    response = await api.client.post(f"/jobs/{job_id}/webhooks/{first_id}/redeliver",
                                     headers=api.auth(user))
    assert response.status_code == 202, response.text
    again = response.json()
    assert again["id"] != first_id and again["redelivery_of"] == first_id
    await arrived(receiver, 2)
    sent = receiver.requests[1]
    assert sent.headers["webhook-id"] == again["id"]
    assert sent.body == receiver.requests[0].body  # the same event
    payload = Webhook(new_secret).verify(sent.body, sent.headers)
    assert payload["type"] == "job.completed" and payload["data"]["id"] == job_id
    with pytest.raises(WebhookVerificationError):
        Webhook(old_secret).verify(sent.body, sent.headers)

    for _ in range(100):  # the outcome is recorded after the answer
        log = {item["id"]: item for item in await deliveries(api, user, job_id)}
        if log.get(again["id"], {}).get("delivered_at"):
            break
        await asyncio.sleep(0.05)
    assert (log[again["id"]]["attempts"], log[again["id"]]["last_status"]) == (1, 200)
    assert log[first_id]["attempts"] == 1  # the original stays as it was
    await forget_redis_log(rt, job_id)  # and SQL has the redelivery's outcome too
    in_sql = {item["id"]: item for item in await deliveries(api, user, job_id)}
    assert in_sql[again["id"]]["delivered_at"] is not None
    assert len(receiver.requests) == 2  # one attempt, no retries


async def test_a_failed_redelivery_is_not_retried_and_a_live_job_redelivers_too(
    any_api: Api, rt: Runtime, receiver: Receiver,
) -> None:
    api, user = any_api, any_api.user()
    job_id, first_id = await finished_job_with_a_failed_delivery(api, rt, user, receiver)
    receiver.plan.append(503)
    response = await api.client.post(f"/jobs/{job_id}/webhooks/{first_id}/redeliver",
                                     headers=api.auth(user))
    assert response.status_code == 202, response.text
    await arrived(receiver, 2)
    for _ in range(100):
        log = {item["id"]: item for item in await deliveries(api, user, job_id)}
        if log[response.json()["id"]]["attempts"]:
            break
        await asyncio.sleep(0.05)
    redelivered = log[response.json()["id"]]
    assert redelivered["last_status"] == 503 and redelivered["gave_up_at"] is not None
    assert redelivered["next_attempt_at"] is None


async def test_redeliver_of_an_unknown_delivery_or_another_users_job_is_404(
    any_api: Api, rt: Runtime, receiver: Receiver,
) -> None:
    api, user = any_api, any_api.user()
    job_id, first_id = await finished_job_with_a_failed_delivery(api, rt, user, receiver)
    unknown = await api.client.post(f"/jobs/{job_id}/webhooks/{job_id}.nope/redeliver",
                                    headers=api.auth(user))
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    other = await api.client.post(f"/jobs/{job_id}/webhooks/{first_id}/redeliver",
                                  headers=api.auth(api.user()))
    assert other.status_code == 404


@pytest.fixture
def private_embedded(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.setenv("TOLLGATE_WEBHOOK_ALLOW_PRIVATE", "true")
    api: Api = request.getfixturevalue("embedded_api")
    return api


async def test_the_client_lists_and_redelivers(private_embedded: Api, receiver: Receiver
                                               ) -> None:
    from service.client import AsyncTollgate

    api, user = private_embedded, private_embedded.user()
    runtime = await open_runtime(api.settings, SECRET)
    try:
        job_id, first_id = await finished_job_with_a_failed_delivery(api, runtime, user,
                                                                     receiver)
    finally:
        await runtime.close()
    async with AsyncTollgate(api.url, api.token(user)) as tg:
        assert [d["id"] for d in await tg.deliveries(job_id)] == [first_id]
        again = await tg.redeliver(job_id, first_id)
        assert again["redelivery_of"] == first_id
    await arrived(receiver, 2)
    assert receiver.requests[1].headers["webhook-id"] == again["id"]


async def test_a_flushed_log_whose_deliveries_all_ended_leaves_redis(
    any_api: Api, rt: Runtime, receiver: Receiver,
) -> None:
    """Its copy in SQL is whole: Redis does not keep it for TOLLGATE_WEBHOOK_LOG_TTL. A log
    with a delivery still due stays (its later outcomes are recorded there)."""
    api, user = any_api, any_api.user()
    pending, _ = await finished_job_with_a_failed_delivery(api, rt, user, receiver)
    job = await create_job(api, user, 1, webhook={"url": receiver.url})
    await upload_all(job)
    for step in ("confirm-upload", "execute"):
        await api.client.post(f"/jobs/{job['id']}/{step}", headers=api.auth(user))
    await report_item(api, job["id"], user, 0)
    client = sender_client(api.settings)

    async def view(owner: str, job_id: str) -> dict[str, Any] | None:
        return await webhook_job_view(rt, owner, job_id)

    try:
        assert await WebhookSender(Outbox(rt.core), api.settings, view, client
                                   ).deliver_once() == 1
    finally:
        await client.aclose()
    [delivered] = await deliveries(api, user, job["id"])
    assert delivered["delivered_at"] is not None
    assert await Outbox(rt.core).log(job["id"])

    await flush_once(rt.core, rt.sessions, api.settings, storage=rt.storage)
    assert await Outbox(rt.core).log(job["id"]) == {}
    assert await deliveries(api, user, job["id"]) == [delivered]  # from SQL
    assert len(await Outbox(rt.core).log(pending)) == 1
