"""Business metrics at /metrics, each moved by a real job: a real API over HTTP on real Redis,
PostgreSQL and S3, with the flusher's passes run as the flusher runs them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.flusher.loop import flush_once
from service.flusher.webhooks import WebhookSender
from service.jobs.deliveries import sender_client
from service.runtime import Runtime, open_runtime
from service.state.outbox import Outbox
from tests.api.conftest import SECRET, Api
from tests.api.flow import callback, create_job, queued_job, report_item, upload_all
from tests.api.receiver import Receiver
from tests.api.scheduling import drain
from tests.deploy.artefacts import METRIC_NAMES

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"hold_ttl": 1, "lease_ttl": 2, "webhook_allow_private": True,
            "flush_attempts": 1, "flush_retry_delay": 0}


@pytest.fixture
async def rt(api: Api) -> AsyncIterator[Runtime]:
    """The flusher's own Runtime (its Redis client, SQL engine and queue)."""
    runtime = await open_runtime(api.settings, SECRET)
    yield runtime
    await runtime.close()


async def scrape(api: Api) -> Samples:
    response = await api.client.get("/metrics")
    assert response.status_code == 200, response.text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def flush_pass(rt: Runtime) -> None:
    await flush_once(rt.core, rt.sessions, rt.settings)


async def finished_job(api: Api, user: str, outcomes: list[bool]) -> dict[str, Any]:
    job = await queued_job(api, user, len(outcomes))
    for index, ok in enumerate(outcomes):
        await report_item(api, job["id"], user, index, ok=ok)
    return job


async def test_metrics_names_are_exactly_the_dashboards(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, credits=10)
    await finished_job(api, user, [True])
    response = await api.client.get("/metrics")
    # The parser names a counter family without its _total, and the process's own
    # counters come with a `_created` family (process_* and python_* are the client's).
    exported = {family.name.removesuffix("_created")
                for family in text_string_to_metric_families(response.text)
                if family.name.startswith("tollgate_")}
    assert exported == {name.removesuffix("_total") for name in METRIC_NAMES}


async def test_a_finished_job_counts_its_job_items_and_credits(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, credits=10)
    before = await scrape(api)
    assert value(before, "tollgate_credits_total", kind="granted") == 10
    assert value(before, "tollgate_jobs_total", model="thumbnail", status="done") == 0
    await finished_job(api, user, [True, True, False])
    after = await scrape(api)
    assert value(after, "tollgate_jobs_total", model="thumbnail", status="done") == 1
    assert value(after, "tollgate_items_total", model="thumbnail", outcome="ok") == 2
    assert value(after, "tollgate_items_total", model="thumbnail", outcome="failed") == 1
    assert value(after, "tollgate_credits_total", kind="charged") == 2
    assert value(after, "tollgate_credits_total", kind="refunded") == 1
    grant = await api.client.post(f"/admin/users/{user}/credits",
                                  json={"amount": 5, "reason": "test"},
                                  headers={**api.auth("root", admin=True),
                                           "Idempotency-Key": "metrics-grant"})
    assert grant.status_code == 200, grant.text
    assert value(await scrape(api), "tollgate_credits_total", kind="granted") == 15


async def test_a_canceled_job_counts_its_unreported_items_as_skipped(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, credits=10)
    job = await queued_job(api, user, 3)
    await report_item(api, job["id"], user, 0)
    canceled = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    assert canceled.status_code == 200, canceled.text
    samples = await scrape(api)
    assert value(samples, "tollgate_jobs_total", model="thumbnail", status="canceled") == 1
    assert value(samples, "tollgate_items_total", model="thumbnail", outcome="skipped") == 2
    assert value(samples, "tollgate_credits_total", kind="refunded") == 2


async def test_live_jobs_and_queue_depth_follow_a_job(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, credits=10)
    queue = api.settings.queue_name

    def live(samples: Samples) -> tuple[float, float, float]:
        return tuple(value(samples, "tollgate_jobs_live", state=state)  # type: ignore[return-value]
                     for state in ("reserved", "queued", "running"))

    job = await create_job(api, user, 2)
    samples = await scrape(api)
    assert live(samples) == (1, 0, 0)
    assert value(samples, "tollgate_queue_depth", queue=queue) == 0
    await upload_all(job)
    for step in ("confirm-upload", "execute"):
        response = await api.client.post(f"/jobs/{job['id']}/{step}", headers=api.auth(user))
        assert response.status_code in (200, 202), response.text
    samples = await scrape(api)
    assert live(samples) == (0, 1, 0)
    assert value(samples, "tollgate_queue_depth", queue=queue) == 0  # it waits in the order
    await drain(api.settings)
    samples = await scrape(api)
    assert value(samples, "tollgate_queue_depth", queue=queue) == 1  # one batch, no worker
    await report_item(api, job["id"], user, 0)
    assert live(await scrape(api)) == (0, 0, 1)
    await report_item(api, job["id"], user, 1)
    assert live(await scrape(api)) == (0, 0, 0)


async def test_an_expired_hold_is_counted(api: Api, rt: Runtime) -> None:
    user = api.user()
    await api.admin_create_user(user, credits=10)
    await create_job(api, user, 2)
    await asyncio.sleep(1.1)  # hold_ttl 1 s
    await flush_pass(rt)
    samples = await scrape(api)
    assert value(samples, "tollgate_holds_expired_total") == 1
    assert value(samples, "tollgate_jobs_total", model="thumbnail", status="canceled") == 1
    assert value(samples, "tollgate_leases_expired_total") == 0


async def test_an_expired_lease_is_counted(api: Api, rt: Runtime) -> None:
    user = api.user()
    await api.admin_create_user(user, credits=10)
    job = await queued_job(api, user, 2)
    await drain(api.settings)  # its one batch is in RQ: none waits behind the lease
    await report_item(api, job["id"], user, 0)  # running, lease 2 s
    await asyncio.sleep(2.2)
    await flush_pass(rt)
    samples = await scrape(api)
    assert value(samples, "tollgate_leases_expired_total") == 1
    assert value(samples, "tollgate_jobs_total", model="thumbnail", status="failed") == 1
    assert value(samples, "tollgate_holds_expired_total") == 0


async def test_flush_lag_grows_until_the_flusher_writes_the_job(api: Api, rt: Runtime) -> None:
    user = api.user()
    await api.admin_create_user(user, credits=10)
    assert value(await scrape(api), "tollgate_flush_lag_seconds") == 0
    await finished_job(api, user, [True])  # flush_delay 0: due at once
    await asyncio.sleep(0.3)
    assert value(await scrape(api), "tollgate_flush_lag_seconds") >= 0.3
    await flush_pass(rt)
    assert value(await scrape(api), "tollgate_flush_lag_seconds") == 0


async def test_a_record_sql_refuses_is_counted_as_a_flush_failure(api: Api, rt: Runtime) -> None:
    user = api.user()
    await api.admin_create_user(user, credits=10)
    assert api.settings.database_url.startswith("postgresql")
    with psycopg.connect(api.settings.database_url.replace("+psycopg", ""),
                         autocommit=True) as conn:
        conn.execute("ALTER TABLE jobs_log ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
    await finished_job(api, user, [True])
    await flush_pass(rt)  # flush_attempts 1: the refused job is set aside at once
    assert value(await scrape(api), "tollgate_flush_failures_total") == 1


async def test_webhook_deliveries_are_counted_by_outcome(api: Api, rt: Runtime) -> None:
    user = api.user()
    await api.admin_create_user(user, credits=10)
    receiver = Receiver(plan=[500])
    try:
        job = await create_job(api, user, 1,
                               webhook={"url": receiver.url, "events": ["completed"]})
        await upload_all(job)
        for step in ("confirm-upload", "execute"):
            response = await api.client.post(f"/jobs/{job['id']}/{step}",
                                             headers=api.auth(user))
            assert response.status_code in (200, 202), response.text
        started = await callback(api, job["id"], user, idempotency_key="s", event="started")
        assert started.status_code == 200, started.text
        await report_item(api, job["id"], user, 0)

        async def view(owner: str, job_id: str) -> dict[str, Any] | None:
            from service.jobs.views import webhook_job_view

            return await webhook_job_view(rt, owner, job_id)

        client = sender_client(api.settings)
        try:
            sender = WebhookSender(Outbox(rt.core), api.settings, view, client)
            await sender.deliver_once()  # answered 500: failed, retried later
            samples = await scrape(api)
            assert value(samples, "tollgate_webhook_deliveries_total", outcome="failed") == 1
            assert value(samples, "tollgate_webhook_deliveries_total", outcome="delivered") == 0
        finally:
            await client.aclose()
    finally:
        receiver.close()
