"""Auth, provisioning and the admin endpoints over HTTP."""

from __future__ import annotations

import jwt
import pytest

from tests.api.conftest import SECRET, Api
from tests.api.flow import me


async def test_missing_or_bad_token_is_a_401_problem(api: Api) -> None:
    forged = jwt.encode({"sub": "mallory", "exp": 4102444800}, "not-the-secret-" + "y" * 32,
                        algorithm="HS256")
    for headers in ({}, {"Authorization": "Bearer nonsense"},
                    {"Authorization": f"Bearer {forged}"}):
        response = await api.client.get("/me", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "unauthorized"


async def test_expired_token_is_refused(api: Api) -> None:
    expired = jwt.encode({"sub": "someone", "exp": 1_000_000_000}, SECRET, algorithm="HS256")
    response = await api.client.get("/me", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401


async def test_a_new_user_is_provisioned_on_the_free_plan(api: Api) -> None:
    user = api.user()
    body = await me(api, user)
    [signup] = body["credits"].pop("grants")  # signup credits: a promotional grant
    assert (signup["kind"], signup["amount"], signup["remaining"], signup["expires_at"]) == (
        "promotional", 10, 10, None)
    assert body == {
        "user_id": user, "plan": "free",
        "credits": {"available": 10, "reserved": 0, "spent": 0, "granted": 10},
        "concurrency": {"active": 0, "limit": 1}, "rule_slots": {"used": 0, "limit": 2},
    }


async def test_admin_endpoints_need_the_admin_role(api: Api) -> None:
    response = await api.client.post("/admin/users", json={"id": "x", "plan": "pro"},
                                     headers=api.auth(api.user()))
    assert response.status_code == 403 and response.json()["code"] == "forbidden"


async def test_admin_creates_a_user_once(api: Api) -> None:
    user = api.user()
    created = await api.admin_create_user(user, plan="pro", credits=50)
    assert created["plan"] == "pro" and created["credits"]["available"] == 50
    again = await api.client.post("/admin/users", json={"id": user, "plan": "pro", "credits": 5},
                                  headers=api.auth("root", admin=True))
    assert again.status_code == 409 and again.json()["code"] == "user_exists"


async def test_admin_sets_a_plan_and_its_limits(api: Api) -> None:
    user = api.user()
    await me(api, user)
    response = await api.client.patch(f"/admin/users/{user}", json={"plan": "pro"},
                                      headers=api.auth("root", admin=True))
    assert response.status_code == 200
    assert (await me(api, user))["rule_slots"]["limit"] == 20
    missing = await api.client.patch("/admin/users/nobody-here", json={"plan": "pro"},
                                     headers=api.auth("root", admin=True))
    assert missing.status_code == 404
    bad = await api.client.patch(f"/admin/users/{user}", json={"plan": "platinum"},
                                 headers=api.auth("root", admin=True))
    assert bad.status_code == 422


async def test_credit_grant_is_idempotent_by_key(api: Api) -> None:
    user = api.user()
    await me(api, user)
    headers = {**api.auth("root", admin=True), "Idempotency-Key": "grant-1"}
    first = await api.client.post(f"/admin/users/{user}/credits",
                                  json={"amount": 25, "reason": "promo"}, headers=headers)
    second = await api.client.post(f"/admin/users/{user}/credits",
                                   json={"amount": 25, "reason": "promo"}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json()["credits"]["available"] == 35
    assert second.json()["credits"]["available"] == 35 and second.json()["duplicate"]


async def test_credit_grant_refusals(api: Api) -> None:
    user = api.user()
    await me(api, user)
    admin = api.auth("root", admin=True)
    no_key = await api.client.post(f"/admin/users/{user}/credits",
                                   json={"amount": 5, "reason": "x"}, headers=admin)
    assert no_key.status_code == 422
    unknown = await api.client.post("/admin/users/nobody-here/credits",
                                    json={"amount": 5, "reason": "x"},
                                    headers={**admin, "Idempotency-Key": "k1"})
    assert unknown.status_code == 404
    overdraw = await api.client.post(f"/admin/users/{user}/credits",
                                     json={"amount": -11, "reason": "x"},
                                     headers={**admin, "Idempotency-Key": "k2"})
    assert overdraw.status_code == 402 and overdraw.json()["code"] == "insufficient_credits"
    not_int = await api.client.post(f"/admin/users/{user}/credits",
                                    json={"amount": "lots", "reason": "x"},
                                    headers={**admin, "Idempotency-Key": "k3"})
    assert not_int.status_code == 422


async def test_a_verified_token_is_refused_once_it_expires(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from service.api.auth import issue_token

    # The clock skew allowed (30 s) shortened to 1 s, so the test need not wait 30 s.
    monkeypatch.setattr("service.api.auth.CLOCK_SKEW_S", 1)
    # `exp` is whole seconds after a truncated `iat`: ttl 3 leaves at least 2 s of validity.
    token = issue_token(SECRET, api.user(), ttl_s=3)
    headers = {"Authorization": f"Bearer {token}"}
    assert (await api.client.get("/me", headers=headers)).status_code == 200
    assert (await api.client.get("/me", headers=headers)).status_code == 200  # from the cache
    await asyncio.sleep(4.1)  # past exp and the skew
    assert (await api.client.get("/me", headers=headers)).status_code == 401
