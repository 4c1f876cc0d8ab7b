"""Admin writes go to SQL first, then Redis, and are safe to retry: a plan change under an
Idempotency-Key applies once, a plan change without one is idempotent by value, a grant
under a key SQL has seen applies nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.history.models import AdminOp, User
from service.runtime import open_runtime
from tests.api.conftest import SECRET, Api
from tests.api.flow import me


async def patch_plan(api: Api, user: str, plan: str, key: str | None = None) -> httpx.Response:
    headers = api.auth("root", admin=True) | ({"Idempotency-Key": key} if key else {})
    return await api.client.patch(f"/admin/users/{user}", json={"plan": plan}, headers=headers)


async def sql_state(api: Api, user: str) -> tuple[str | None, int]:
    """The plan in `users` and how many keyed admin ops SQL recorded for the user."""
    rt = await open_runtime(api.settings, SECRET)
    try:
        async with rt.sessions() as session:
            row = await session.get(User, user)
            ops = [op for op in (await session.scalars(
                AdminOp.__table__.select().where(AdminOp.user_id == user))).all()]
        return (row.plan if row else None), len(ops)
    finally:
        await rt.close()


async def test_a_retried_plan_change_with_the_same_key_applies_once(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="free")
    first = await patch_plan(api, user, "pro", key="move-1")
    assert first.status_code == 200 and first.json()["plan"] == "pro", first.text
    later = await patch_plan(api, user, "free", key="move-2")
    assert later.status_code == 200 and later.json()["plan"] == "free"

    # The first call again (a client that never saw its answer): it must not undo move-2.
    retried = await patch_plan(api, user, "pro", key="move-1")
    assert retried.status_code == 200, retried.text
    assert retried.json()["plan"] == "free"
    view: dict[str, Any] = await me(api, user)
    assert (view["plan"], view["concurrency"]["limit"]) == ("free", 1)
    assert await sql_state(api, user) == ("free", 2)


async def test_a_plan_change_without_a_key_is_safe_to_retry(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="free")
    answers = [await patch_plan(api, user, "pro") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert {a.json()["plan"] for a in answers} == {"pro"}
    view = await me(api, user)
    assert (view["plan"], view["concurrency"]["limit"]) == ("pro", 10)
    assert await sql_state(api, user) == ("pro", 0)  # SQL holds the plan; no op recorded


async def test_admin_writes_to_an_unknown_user_are_404_and_write_nothing(api: Api) -> None:
    user = api.user()
    assert (await patch_plan(api, user, "pro", key="k")).status_code == 404
    grant = await api.client.post(f"/admin/users/{user}/credits",
                                  json={"amount": 5, "reason": "x"},
                                  headers=api.auth("root", admin=True) | {"Idempotency-Key": "g"})
    assert grant.status_code == 404 and grant.json()["code"] == "not_found"
    assert await sql_state(api, user) == (None, 0)


async def test_a_refused_removal_leaves_no_ledger_row(api: Api) -> None:
    from sqlalchemy import select

    from service.history.models import LedgerEntry

    user = api.user()
    await api.admin_create_user(user, credits=10)
    headers = api.auth("root", admin=True) | {"Idempotency-Key": "take-too-much"}
    refused = await api.client.post(f"/admin/users/{user}/credits",
                                    json={"amount": -11, "reason": "chargeback"}, headers=headers)
    assert refused.status_code == 402 and refused.json()["code"] == "insufficient_credits"
    rt = await open_runtime(api.settings, SECRET)
    try:
        async with rt.sessions() as session:
            kinds = list(await session.scalars(
                select(LedgerEntry.kind).where(LedgerEntry.user_id == user)))
    finally:
        await rt.close()
    assert kinds == ["grant"]  # the signup only: the refused removal was rolled back
    # The same key may be used again for a removal that fits.
    taken = await api.client.post(f"/admin/users/{user}/credits",
                                  json={"amount": -4, "reason": "chargeback"}, headers=headers)
    assert taken.status_code == 200 and taken.json()["credits"]["available"] == 6


class SqlDown(Exception):
    """Stands in for SQL failing in the middle of an admin write."""


async def test_admin_writes_go_to_sql_first(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    import service.api.users as users

    user = api.user()
    await api.admin_create_user(user, plan="free", credits=10)

    async def down(*_: object, **__: object) -> None:
        raise SqlDown

    monkeypatch.setattr(users, "set_user_plan", down)
    monkeypatch.setattr(users, "insert_ledger", down)
    moved = await patch_plan(api, user, "pro", key="k1")
    granted = await api.client.post(
        f"/admin/users/{user}/credits", json={"amount": 5, "reason": "x"},
        headers=api.auth("root", admin=True) | {"Idempotency-Key": "g1"})
    assert moved.status_code >= 500 and granted.status_code >= 500
    # SQL refused, so Redis was never asked: nothing changed anywhere.
    view = await me(api, user)
    assert (view["plan"], view["credits"]["granted"]) == ("free", 10)
    assert await sql_state(api, user) == ("free", 0)

    monkeypatch.undo()  # SQL is back: the retries apply, once
    assert (await patch_plan(api, user, "pro", key="k1")).json()["plan"] == "pro"
    again = await api.client.post(
        f"/admin/users/{user}/credits", json={"amount": 5, "reason": "x"},
        headers=api.auth("root", admin=True) | {"Idempotency-Key": "g1"})
    assert again.status_code == 200 and again.json()["credits"]["granted"] == 15
