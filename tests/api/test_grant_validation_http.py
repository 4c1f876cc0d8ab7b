"""Admin grants (docs/reference.md): a reused Idempotency-Key with another body is 422
idempotency_key_reused, and `amount` is a JSON integer only (issue 23, low finding)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api


async def _grant(api: Api, user: str, key: str, body: dict[str, Any]) -> Any:
    return await api.client.post(f"/admin/users/{user}/credits", json=body,
                                 headers={**api.auth("root", admin=True), "Idempotency-Key": key})


async def test_a_grant_key_reused_with_another_body_is_422(embedded_api: Api) -> None:
    api = embedded_api
    user = api.user()
    await api.admin_create_user(user, credits=10)
    first = await _grant(api, user, "g-1", {"amount": 5, "reason": "promo"})
    assert first.status_code == 200 and first.json()["duplicate"] is False
    again = await _grant(api, user, "g-1", {"amount": 5, "reason": "promo"})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    for body in ({"amount": 6, "reason": "promo"}, {"amount": 5, "reason": "other"}):
        reused = await _grant(api, user, "g-1", body)
        assert reused.status_code == 422, reused.text
        assert reused.json()["code"] == "idempotency_key_reused"
    me = await api.client.get("/me", headers=api.auth(user))
    assert me.json()["credits"]["available"] == 15


@pytest.mark.parametrize("amount", ["1", 1.0, "1e3"])
async def test_a_grant_amount_that_is_not_a_json_integer_is_422(embedded_api: Api,
                                                                amount: Any) -> None:
    api = embedded_api
    user = api.user()
    await api.admin_create_user(user, credits=10)
    refused = await _grant(api, user, f"g-{amount}", {"amount": amount, "reason": "promo"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "validation_error"
    me = await api.client.get("/me", headers=api.auth(user))
    assert me.json()["credits"]["available"] == 10
