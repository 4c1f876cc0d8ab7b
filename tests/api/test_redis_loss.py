"""Redis loses a user (a restart without persistence, a failover that lost writes): the next
request rebuilds the record from SQL. The plan comes from `users`, the balance from the
ledger, signup credits are never given twice, and jobs that were live in the lost Redis are
refunded through their holds. FLUSHALL runs on a redis-server of the test's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from service.cli.audit import audit, run_audit
from service.history.models import LedgerEntry
from service.runtime import open_runtime
from service.settings import Settings
from tests.api.conftest import SECRET, Api, ServerThread
from tests.api.flow import create_job, me, queued_job, report_item
from tests.api.history import flush_everything
from tests.conftest import OwnRedis, free_port
from tests.persistence.conftest import database_url  # noqa: F401

SIGNUP = 100
LOST = "lost_with_redis"


@asynccontextmanager
async def serve(own_redis: OwnRedis, database_url: str,  # noqa: F811
                tmp_path: Path, flush_delay: int) -> AsyncIterator[Api]:
    port = free_port()
    settings = Settings(redis_url=own_redis.url, queue_redis_url=own_redis.url,
                        database_url=database_url, public_url=f"http://127.0.0.1:{port}",
                        jwt_secret=SECRET, storage_dir=str(tmp_path / "files"),
                        signup_credits=SIGNUP, flush_delay=flush_delay, buckets=4)
    with ServerThread(settings, port):
        async with httpx.AsyncClient(base_url=settings.public_url, timeout=30) as client:
            yield Api(settings.public_url, settings, client)


@pytest.fixture
async def own_api(own_redis: OwnRedis, database_url: str,  # noqa: F811
                  tmp_path: Path) -> AsyncIterator[Api]:
    async with serve(own_redis, database_url, tmp_path, flush_delay=0) as api:
        yield api


@pytest.fixture
async def delayed_api(own_redis: OwnRedis, database_url: str,  # noqa: F811
                      tmp_path: Path) -> AsyncIterator[Api]:
    """Finished jobs wait an hour for their flush (TOLLGATE_FLUSH_DELAY); the ledger not."""
    async with serve(own_redis, database_url, tmp_path, flush_delay=3600) as api:
        yield api


async def flushall(api: Api) -> None:
    client = Redis.from_url(api.settings.redis_url or "")
    try:
        await client.flushall()  # the test's own redis-server, never the shared one
    finally:
        await client.aclose()


async def admin(api: Api, method: str, path: str, key: str | None = None,
                **body: Any) -> httpx.Response:
    headers = api.auth("root", admin=True) | ({"Idempotency-Key": key} if key else {})
    return await api.client.request(method, path, json=body, headers=headers)


async def ledger_of(api: Api, user: str) -> dict[str, tuple[str, int, str | None]]:
    rt = await open_runtime(api.settings, SECRET)
    try:
        async with rt.sessions() as session:
            rows = await session.scalars(select(LedgerEntry).where(LedgerEntry.user_id == user))
            return {row.id: (row.kind, row.amount, row.reason) for row in rows}
    finally:
        await rt.close()


async def audit_differences(api: Api) -> list[Any]:
    rt = await open_runtime(api.settings, SECRET)
    try:
        return (await run_audit(rt.core, rt.sessions)).differences
    finally:
        await rt.close()


async def test_a_user_redis_lost_is_rebuilt_from_sql_without_new_signup_credits(
        own_api: Api) -> None:
    api, user = own_api, "ann"
    assert (await me(api, user))["credits"]["granted"] == SIGNUP  # provisioned lazily
    moved = await admin(api, "PATCH", f"/admin/users/{user}", key="plan-1", plan="pro")
    assert moved.status_code == 200, moved.text
    granted = await admin(api, "POST", f"/admin/users/{user}/credits", key="promo-1",
                          amount=50, reason="promo")
    assert granted.status_code == 200, granted.text

    done = await queued_job(api, user, 2)  # runs to done: charged in full
    for index in range(2):
        await report_item(api, done["id"], user, index)
    live = await create_job(api, user, 3)  # live when Redis is lost; its hold gets flushed
    await flush_everything(api)
    unflushed = await create_job(api, user, 4)  # its hold never reached SQL
    before = (await me(api, user))["credits"]
    price = before["reserved"] // 7  # the live job's 3 items and the unflushed one's 4
    live_cost, spent = 3 * price, before["spent"]
    assert spent == 2 * price and live_cost > 0
    assert before["granted"] == SIGNUP + 50

    await flushall(api)

    view = await me(api, user)  # the first request after the loss rebuilds the user
    assert view["plan"] == "pro"
    grants = view["credits"].pop("grants")
    assert view["credits"] == {"available": SIGNUP + 50 - spent, "reserved": 0,
                               "spent": spent, "granted": SIGNUP + 50}
    # The balance is back in the grants (the signup grant and the admin's grant of 50).
    assert sum(grant["remaining"] for grant in grants) == SIGNUP + 50 - spent
    ledger = await ledger_of(api, user)
    assert ledger[f"release:{live['id']}"] == ("release", live_cost, "lost_with_redis")
    assert f"hold:{unflushed['id']}" not in ledger
    assert [entry for entry in ledger if entry.startswith("signup:")] == [f"signup:{user}"]

    # A retried grant whose key SQL has seen applies nothing, though Redis forgot the key.
    again = await admin(api, "POST", f"/admin/users/{user}/credits", key="promo-1",
                        amount=50, reason="promo")
    assert again.status_code == 200 and again.json()["duplicate"] is True, again.text
    assert (await me(api, user))["credits"]["available"] == SIGNUP + 50 - spent
    # So does a plan change under a key SQL recorded (whatever plan the retry carries).
    replayed = await admin(api, "PATCH", f"/admin/users/{user}", key="plan-1", plan="free")
    assert replayed.status_code == 200 and replayed.json()["plan"] == "pro", replayed.text
    await flush_everything(api)
    assert await audit_differences(api) == []


async def test_a_new_job_after_the_loss_finds_the_rebuilt_balance(own_api: Api) -> None:
    api, user = own_api, "bob"
    job = await queued_job(api, user, 2)  # the first request provisions bob
    await report_item(api, job["id"], user, 0)
    await report_item(api, job["id"], user, 1, ok=False)
    spent = (await me(api, user))["credits"]["spent"]
    assert spent > 0
    await flush_everything(api)
    await flushall(api)

    again = await create_job(api, user, 2)  # reserve finds no user: rebuilt, then reserved
    credits = (await me(api, user))["credits"]
    assert (credits["granted"], credits["spent"]) == (SIGNUP, spent)  # no second signup
    assert credits["available"] + credits["reserved"] == SIGNUP - spent
    assert credits["reserved"] > 0
    assert (await api.client.get(f"/jobs/{again['id']}", headers=api.auth(user))
            ).status_code == 200
    await flush_everything(api)
    assert await audit_differences(api) == []


async def test_a_loss_before_the_flush_delay_keeps_what_the_client_saw_and_the_books_close(
        delayed_api: Api) -> None:
    """The split of issue 17: the ledger was flushed on every pass, a finished job only after
    the flush delay, so a loss in between left the job's charge in SQL without its row (GET
    404 for a job its client saw done and charged, audit failing for ever). Now the pass after
    a job ends writes its row with its money (its Redis record stays for the delay): after a
    loss its owner reads it done and charged, and a job that had not ended is released and
    read as lost."""
    api, user = delayed_api, "cat"
    done = await queued_job(api, user, 2)
    for index in range(2):
        await report_item(api, done["id"], user, index)
    live = await create_job(api, user, 3)
    seen = (await api.client.get(f"/jobs/{done['id']}", headers=api.auth(user))).json()
    assert (seen["status"], seen["charged"]) == ("done", seen["cost"]) and seen["cost"] > 0
    await flush_everything(api)  # the holds, and the done job's row with its money
    ledger = await ledger_of(api, user)
    assert ledger[f"charge:{done['id']}"] == ("charge", -seen["cost"], None)
    assert await audit_differences(api) == []

    await flushall(api)

    # The owner's first request after the loss is the GET: it rebuilds the user from SQL.
    got = await api.client.get(f"/jobs/{done['id']}", headers=api.auth(user))
    assert got.status_code == 200, got.text
    view = got.json()
    assert (view["status"], view["charged"], view["cost"]) == ("done", seen["cost"], seen["cost"])
    other = await api.client.get(f"/jobs/{done['id']}", headers=api.auth("dan"))
    assert other.status_code == 404  # not the owner: nothing rebuilt, nothing found
    lost_live = await api.client.get(f"/jobs/{live['id']}", headers=api.auth(user))
    assert (lost_live.status_code, lost_live.json()["reason"]) == (200, LOST)
    credits = (await me(api, user))["credits"]
    [signup] = credits.pop("grants")
    assert credits == {"available": SIGNUP - seen["cost"], "reserved": 0,
                       "spent": seen["cost"], "granted": SIGNUP}
    assert (signup["kind"], signup["remaining"]) == ("promotional", SIGNUP - seen["cost"])
    ledger = await ledger_of(api, user)
    assert ledger[f"release:{live['id']}"] == ("release", live["cost"], LOST)
    listed = await api.client.get("/jobs", headers=api.auth(user))
    assert {job["id"] for job in listed.json()["items"]} >= {done["id"], live["id"]}

    await flush_everything(api)
    assert await audit_differences(api) == []
    assert await asyncio.to_thread(lambda: asyncio.run(audit(api.settings, None))) == 0
