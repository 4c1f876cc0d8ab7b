"""Bad input on every endpoint is a 4xx problem document with a code, never a 500: the
exact status and code the reference names (422 `validation_error` for a body or parameter that does
not validate, 400 `malformed_json` for JSON that does not parse)."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api
from tests.api.flow import create_job, items, me

GOOD_ITEM = {"name": "a.png", "content_type": "image/png", "size": 10}


@pytest.mark.parametrize(("body", "status", "code"), [
    ({}, 422, "validation_error"),
    ({"items": []}, 422, "validation_error"),
    ({"items": "many"}, 422, "validation_error"),
    ({"items": [{"name": "a", "content_type": "image/png"}]}, 422, "validation_error"),
    ({"items": [{**GOOD_ITEM, "size": -1}]}, 422, "validation_error"),
    ({"items": [{**GOOD_ITEM, "size": "big"}]}, 422, "validation_error"),
    ({"items": [{**GOOD_ITEM, "content_type": "not a type"}]}, 422, "validation_error"),
    ({"items": [{**GOOD_ITEM, "name": ""}]}, 422, "validation_error"),
    ({"items": [GOOD_ITEM], "extra": 1}, 422, "validation_error"),
])
async def test_invalid_job_bodies_are_refused(api: Api, body: dict[str, object],
                                              status: int, code: str) -> None:
    user = api.user()
    response = await api.client.post("/jobs", json=body, headers=api.auth(user))
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code
    assert (await me(api, user))["credits"]["reserved"] == 0  # nothing was held


async def test_malformed_json_is_a_400(api: Api) -> None:
    response = await api.client.post("/jobs", content=b'{"items": [', headers={
        **api.auth(api.user()), "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_json"


async def test_too_many_items_is_a_422(api: Api) -> None:
    many = items(api.settings.max_items + 1)
    response = await api.client.post("/jobs", json={"items": many}, headers=api.auth(api.user()))
    assert response.status_code == 422 and response.json()["code"] == "validation_error"


async def test_an_oversize_body_is_a_413(api: Api) -> None:
    huge = b'{"items": [' + b" " * (api.settings.max_body_bytes + 10) + b"]}"
    response = await api.client.post("/jobs", content=huge, headers={
        **api.auth(api.user()), "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


@pytest.mark.parametrize("path", ["/jobs/nope", "/jobs/01jc3xxxxxxxxxxxxxxxxxxxxx-3",
                                  "/jobs/01jc3xxxxxxxxxxxxxxxxxxxxx-999999", "/rules/nope"])
async def test_unknown_ids_are_404_problems(api: Api, path: str) -> None:
    response = await api.client.get(path, headers=api.auth(api.user()))
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_unknown_job_actions_are_404(api: Api) -> None:
    user = api.user()
    for action in ("confirm-upload", "execute", "cancel"):
        response = await api.client.post(f"/jobs/nope/{action}", headers=api.auth(user))
        assert response.status_code == 404, action


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1000}, {"limit": "x"},
                                    {"status": "weird"}, {"cursor": "!!!"}])
async def test_bad_list_parameters(api: Api, params: dict[str, object]) -> None:
    response = await api.client.get("/jobs", params=params, headers=api.auth(api.user()))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


@pytest.mark.parametrize("body", [
    {}, {"idempotency_key": "k"}, {"idempotency_key": "k", "event": "exploded"},
    {"idempotency_key": "k", "event": "item"},
    {"idempotency_key": "k", "event": "item", "item_index": 99, "ok": True},
    {"idempotency_key": "k", "event": "item", "item_index": -1, "ok": True},
])
async def test_bad_callbacks_are_refused(api: Api, body: dict[str, object]) -> None:
    from tests.api.flow import queued_job, worker_auth

    user = api.user()
    job = await queued_job(api, user, 1)
    response = await api.client.post(f"/jobs/{job['id']}/callback", json=body,
                                      headers=worker_auth(job["id"], user))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))
            ).json()["done_items"] == 0


async def test_bad_rule_bodies(api: Api) -> None:
    user = api.user()
    for body in ({}, {"name": ""}, {"name": "x", "params": [1]}, {"name": 5}):
        response = await api.client.post("/rules", json=body, headers=api.auth(user))
        assert response.status_code == 422, body
        assert response.json()["code"] == "validation_error", body


async def test_unknown_route_and_wrong_method(api: Api) -> None:
    missing = await api.client.get("/nowhere", headers=api.auth(api.user()))
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    job = await create_job(api, api.user(), 1)
    wrong = await api.client.delete(f"/jobs/{job['id']}", headers=api.auth(api.user()))
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
