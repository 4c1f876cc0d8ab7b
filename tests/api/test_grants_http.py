"""Credit grants that expire (docs/billing.md): a hold draws the open grants in burn-down
order (the earliest expires_at first, no expiry last, promotional before paid on a tie), a
release gives back to the grants it drew, and what is left in a grant at its expires_at
leaves the balance with an `expire:<grant id>` ledger row, written by the flusher. The SQL
ledger sums to the balance at every step, and `tollgate audit` checks every grant."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from service.cli.audit import run_audit
from service.history.models import CreditGrant, LedgerEntry
from service.runtime import Runtime
from service.state.users import MAX_OPEN_GRANTS
from tests.api.conftest import Api
from tests.api.flow import create_job, me, report_item, upload_all
from tests.api.history import flush_everything


def in_seconds(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def grant(api: Api, user: str, amount: int, *, kind: str | None = None,
                expires_at: datetime | None = None, status: int = 200) -> dict[str, Any]:
    body: dict[str, Any] = {"amount": amount, "reason": "test"}
    if kind is not None:
        body["kind"] = kind
    if expires_at is not None:
        body["expires_at"] = expires_at.isoformat()
    response = await api.client.post(
        f"/admin/users/{user}/credits", json=body,
        headers={**api.auth("root", admin=True), "Idempotency-Key": uuid.uuid4().hex})
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def grants_of(api: Api, user: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = (await me(api, user))["credits"]["grants"]
    return listed


async def ledger_rows(rt: Runtime, user: str) -> list[LedgerEntry]:
    async with rt.sessions() as session:
        return list(await session.scalars(
            select(LedgerEntry).where(LedgerEntry.user_id == user).order_by(LedgerEntry.at)))


async def assert_books(api: Api, rt: Runtime, user: str) -> int:
    """After a flush: SUM(ledger) = available, granted = available + reserved + spent,
    and the audit finds nothing. Returns available."""
    await flush_everything(api)
    credits = (await me(api, user))["credits"]
    assert credits["granted"] == credits["available"] + credits["reserved"] + credits["spent"]
    assert sum(row.amount for row in await ledger_rows(rt, user)) == credits["available"]
    report = await run_audit(rt.core, rt.sessions, [user])
    assert report.differences == []
    return int(credits["available"])


async def wait_until(when: datetime) -> None:
    await asyncio.sleep(max((when - datetime.now(UTC)).total_seconds(), 0) + 0.2)


@pytest.mark.slow  # over 3 s: the full suite runs it, not the fast lane
async def test_a_hold_burns_the_earliest_expiry_first_and_the_rest_expires(
        any_api: Api, rt: Runtime) -> None:
    api, user = any_api, any_api.user()
    await api.admin_create_user(user, credits=0)
    expires = in_seconds(3)
    await grant(api, user, 10, kind="promotional", expires_at=expires)
    await grant(api, user, 10, kind="paid")
    promo, paid = await grants_of(api, user)
    assert (promo["kind"], promo["amount"], promo["remaining"]) == ("promotional", 10, 10)
    assert datetime.fromisoformat(promo["expires_at"]) == expires.replace(
        microsecond=expires.microsecond // 1000 * 1000)
    assert (paid["kind"], paid["remaining"], paid["expires_at"]) == ("paid", 10, None)

    job = await create_job(api, user, 15)  # a hold of 15: 10 + 5
    drawn = {g["id"]: g["remaining"] for g in await grants_of(api, user)}
    assert drawn == {promo["id"]: 0, paid["id"]: 5}
    record = await rt.core.job_record(job["id"])
    assert record["grants"] == f"{promo['id']}:10,{paid['id']}:5"
    assert await assert_books(api, rt, user) == 5

    canceled = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    assert canceled.status_code == 200, canceled.text  # released in full, back to both
    assert {g["id"]: g["remaining"] for g in await grants_of(api, user)} == {
        promo["id"]: 10, paid["id"]: 10}
    assert await assert_books(api, rt, user) == 20

    await wait_until(expires)
    assert await assert_books(api, rt, user) == 10  # the flusher expired what was left
    assert [g["id"] for g in await grants_of(api, user)] == [paid["id"]]
    expired = [row for row in await ledger_rows(rt, user) if row.kind == "expire"]
    assert [(row.id, row.amount) for row in expired] == [(f"expire:{promo['id']}", -10)]
    counters = await rt.core.client.hget(rt.core.keys.user(user).bucket.counters,
                                         "credits:expire")
    assert int(counters) >= 10


@pytest.mark.slow  # over 3 s: the full suite runs it, not the fast lane
async def test_a_hold_that_outlives_its_grant(any_api: Api, rt: Runtime) -> None:
    api, user = any_api, any_api.user()
    await api.admin_create_user(user, plan="pro", credits=0)
    expires = in_seconds(3)
    granted = await grant(api, user, 10, kind="paid", expires_at=expires)
    assert granted["credits"]["available"] == 10
    [only] = await grants_of(api, user)
    job = await create_job(api, user, 8)  # holds 8 of the grant's 10
    await upload_all(job)
    for step in ("confirm-upload", "execute"):
        answer = await api.client.post(f"/jobs/{job['id']}/{step}", headers=api.auth(user))
        assert answer.status_code in (200, 202), answer.text
    for index in range(3):
        await report_item(api, job["id"], user, index)
    assert await assert_books(api, rt, user) == 2

    await wait_until(expires)  # the 2 never held expire at expiry
    assert await assert_books(api, rt, user) == 0
    assert [(row.id, row.amount) for row in await ledger_rows(rt, user)
            if row.kind == "expire"] == [(f"expire:{only['id']}", -2)]
    assert await grants_of(api, user) == []  # expired: no longer open

    # The job ends: charged 3, the 5 released go back to an expired grant and expire at once.
    canceled = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    assert canceled.status_code == 200, canceled.text
    assert (canceled.json()["charged"], canceled.json()["refunded"]) == (3, 5)
    assert await assert_books(api, rt, user) == 0
    expired = sorted((row.id, row.amount) for row in await ledger_rows(rt, user)
                     if row.kind == "expire")
    assert expired == [(f"expire:{only['id']}", -2), (f"expire:{only['id']}:{job['id']}", -5)]
    credits = (await me(api, user))["credits"]
    assert (credits["spent"], credits["granted"]) == (3, 3)
    assert await rt.core.client.hlen(rt.core.keys.user(user).grants) == 0  # closed


async def test_promotional_is_drawn_before_paid_on_the_same_expiry(
        any_api: Api, rt: Runtime) -> None:
    api, user = any_api, any_api.user()
    await api.admin_create_user(user, credits=0)
    expires = in_seconds(3600)
    await grant(api, user, 4, kind="paid", expires_at=expires)  # older, but paid
    await grant(api, user, 4, kind="promotional", expires_at=expires)
    await grant(api, user, 4, kind="promotional")  # no expiry: last
    listed = await grants_of(api, user)
    assert [(g["kind"], g["expires_at"] is None) for g in listed] == [
        ("promotional", False), ("paid", False), ("promotional", True)]
    await create_job(api, user, 6)
    assert [g["remaining"] for g in await grants_of(api, user)] == [0, 2, 4]
    assert await assert_books(api, rt, user) == 6


async def test_the_open_grants_are_bounded(any_api: Api, rt: Runtime) -> None:
    api, user = any_api, any_api.user()
    await api.admin_create_user(user, credits=0)
    for start in range(0, MAX_OPEN_GRANTS, 20):
        await asyncio.gather(*(grant(api, user, 1) for _ in range(start, start + 20)))
    refused = await grant(api, user, 1, status=409)
    assert refused["code"] == "too_many_grants"
    credits = (await me(api, user))["credits"]
    assert (credits["available"], len(credits["grants"])) == (MAX_OPEN_GRANTS, MAX_OPEN_GRANTS)
    async with rt.sessions() as session:  # the refused grant's rows were rolled back
        rows = list(await session.scalars(select(CreditGrant).where(
            CreditGrant.user_id == user)))
    assert len(rows) == MAX_OPEN_GRANTS
    # A removal takes from the grants (burn-down order) and frees the used-up ones.
    await grant(api, user, -5)
    assert len(await grants_of(api, user)) == MAX_OPEN_GRANTS - 5
    await grant(api, user, 1)
    assert await assert_books(api, rt, user) == MAX_OPEN_GRANTS - 5 + 1


async def test_bad_grants_are_refused_with_a_problem(any_api: Api) -> None:
    api, user = any_api, any_api.user()
    await api.admin_create_user(user, credits=0)
    past = await grant(api, user, 5, expires_at=in_seconds(-5), status=422)
    assert past["code"] == "validation_error"
    too_late = await grant(api, user, 5, expires_at=in_seconds(3.2e9), status=422)
    assert too_late["code"] == "validation_error"
    on_removal = await grant(api, user, -1, expires_at=in_seconds(60), status=422)
    assert on_removal["code"] == "validation_error"
    response = await api.client.post(
        f"/admin/users/{user}/credits", json={"amount": 5, "reason": "x", "kind": "gift"},
        headers={**api.auth("root", admin=True), "Idempotency-Key": "k"})
    assert response.status_code in (400, 422) and "code" in response.json()
    naive = await api.client.post(
        f"/admin/users/{user}/credits",
        json={"amount": 5, "reason": "x", "expires_at": "2999-01-01T00:00:00"},
        headers={**api.auth("root", admin=True), "Idempotency-Key": "k2"})
    assert naive.status_code in (400, 422) and "code" in naive.json()
    assert (await me(api, user))["credits"]["available"] == 0


async def test_audit_catches_a_corrupted_grant(any_api: Api, rt: Runtime) -> None:
    api, user = any_api, any_api.user()
    await api.admin_create_user(user, credits=0)
    await grant(api, user, 7, kind="promotional", expires_at=in_seconds(3600))
    await assert_books(api, rt, user)
    [listed] = await grants_of(api, user)
    key = rt.core.keys.user(user).grants
    stored = json.loads(await rt.core.client.hget(key, listed["id"]))
    await rt.core.client.hset(key, listed["id"], json.dumps({**stored, "c": stored["c"] + 1}))
    report = await run_audit(rt.core, rt.sessions, [user])
    assert [d.what for d in report.differences] == [
        f"grant {listed['id']}: remaining + held + charged + expired + removed"]
    await rt.core.client.hset(key, listed["id"], json.dumps({**stored, "a": 8, "r": 8}))
    report = await run_audit(rt.core, rt.sessions, [user])
    assert {d.what for d in report.differences} >= {f"grant {listed['id']}: amount and kind"}
