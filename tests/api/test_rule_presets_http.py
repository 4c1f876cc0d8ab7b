"""Rules as processing presets over HTTP (docs/models.md, "Params and rule presets"): a rule's
model, params and webhook; params checked against the model's params_schema wherever they
enter (rule create, rule edit, job create), 422 naming the field; a job copies its rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service.history.models import JobLog
from service.runtime import open_runtime
from tests.api.conftest import SECRET, Api
from tests.api.flow import create_job, items, me
from tests.api.history import flush_everything

HOOK = "http://127.0.0.1:9/hook"  # never called: these jobs never run
MODELS = """
[models.thumb]
processor = "workers.processors.thumbnail:make_thumbnails"
price_per_item = 2
queue = "{prefix}-thumb"
default = true

[models.thumb.params_schema]
type = "object"
required = ["size"]
additionalProperties = false
properties.size = {{ type = "integer", minimum = 16, maximum = 1024 }}
properties.format = {{ enum = ["png", "jpeg", "webp"] }}
properties.crop = {{ type = "array", items = {{ type = "integer" }}, maxItems = 4 }}

[models.bare]
processor = "workers.processors.noop:passthrough"
price_per_item = 7
queue = "{prefix}-bare"

[models.anything]
processor = "workers.processors.noop:passthrough"
price_per_item = 1
queue = "{prefix}-anything"
params_schema = {{ type = "object" }}
"""
THUMB_SCHEMA = {
    "type": "object", "required": ["size"], "additionalProperties": False,
    "properties": {"size": {"type": "integer", "minimum": 16, "maximum": 1024},
                   "format": {"enum": ["png", "jpeg", "webp"]},
                   "crop": {"type": "array", "items": {"type": "integer"}, "maxItems": 4}}}


@pytest.fixture
def settings_overrides(tmp_path: Path, key_prefix: str) -> dict[str, Any]:
    path = tmp_path / "models.toml"
    path.write_text(MODELS.format(prefix=key_prefix))
    return {"models": str(path), "webhook_allow_private": True}


async def post_rule(api: Api, user: str, **body: Any) -> dict[str, Any]:
    response = await api.client.post("/rules", json={"name": "preset", **body},
                                     headers=api.auth(user))
    assert response.status_code == 201, response.text
    rule: dict[str, Any] = response.json()
    return rule


async def job_view(api: Api, user: str, job_id: str) -> dict[str, Any]:
    response = await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def assert_refused(response: Any, field: str, status: int = 422,
                   code: str = "validation_error") -> None:
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["code"] == code, problem
    if field:
        assert field in problem["detail"], problem
        assert problem["field"] == field, problem
        assert field in [error["key"] for error in problem["errors"]], problem


async def test_get_models_shows_each_schema(api: Api) -> None:
    response = await api.client.get("/models", headers=api.auth(api.user()))
    schemas = {model["name"]: model["params_schema"] for model in response.json()["items"]}
    assert schemas == {"thumb": THUMB_SCHEMA, "bare": None, "anything": {"type": "object"}}


async def test_a_rule_is_a_preset_and_patch_edits_it(api: Api) -> None:
    user = api.user()
    rule = await post_rule(api, user, model="thumb", params={"size": 64, "format": "webp"},
                           webhook={"url": HOOK, "events": ["started", "completed"]})
    assert {k: rule[k] for k in ("name", "model", "params", "webhook")} == {
        "name": "preset", "model": "thumb", "params": {"size": 64, "format": "webp"},
        "webhook": {"url": HOOK, "events": ["started", "completed"]}}
    url = f"/rules/{rule['id']}"

    async def patch(body: dict[str, Any]) -> dict[str, Any]:
        response = await api.client.patch(url, json=body, headers=api.auth(user))
        assert response.status_code == 200, response.text
        patched: dict[str, Any] = response.json()
        assert (await api.client.get(url, headers=api.auth(user))).json() == patched
        return patched

    renamed = await patch({"name": "small webp"})
    assert renamed == {**rule, "name": "small webp"}  # the rest untouched
    resized = await patch({"params": {"size": 32}})
    assert resized["params"] == {"size": 32} and resized["model"] == "thumb"
    bare = await patch({"model": "bare", "params": {}, "webhook": None})
    assert (bare["model"], bare["params"], bare["webhook"]) == ("bare", {}, None)
    defaulted = await patch({"model": None, "params": {"size": 20}})
    assert (defaulted["model"], defaulted["params"]) == (None, {"size": 20})
    assert await patch({}) == defaulted

    stranger = await api.client.patch(url, json={"name": "mine"}, headers=api.auth(api.user()))
    assert stranger.status_code == 404
    unknown = await api.client.patch(url, json={"model": "nope"}, headers=api.auth(user))
    assert_refused(unknown, "", code="unknown_model")
    private = await api.client.patch(url, json={"webhook": {"url": "http://no-such-host.invalid/"}},
                                     headers=api.auth(user))
    assert_refused(private, "", code="webhook_url_not_allowed")
    await api.client.delete(url, headers=api.auth(user))
    gone = await api.client.patch(url, json={"name": "x"}, headers=api.auth(user))
    assert gone.status_code == 404


# (params, model, the field the 422 names)
BAD_PARAMS = [
    ({"size": 8}, "thumb", "params.size"),
    ({"size": "64"}, "thumb", "params.size"),
    ({"size": 64, "format": "gif"}, "thumb", "params.format"),
    ({"size": 64, "colour": "red"}, "thumb", "params.colour"),
    ({"format": "png"}, "thumb", "params.size"),  # required
    ({"size": 64, "crop": [1, "x"]}, "thumb", "params.crop[1]"),
    ({"x": 1}, "bare", "params.x"),  # a model without a schema takes {} only
    ({"a": "tab\there"}, "anything", "params.a"),  # no control characters
    ({"a": {"b\x00": 1}}, "anything", "params.a"),  # the object holding the key
    ({"blob": "b" * (16 * 1024)}, "anything", "params"),  # over 16 KB of JSON
]


def nested(levels: int) -> dict[str, Any]:
    """Params `levels` objects deep, the params object itself included."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(("params", "model", "field"), [
    *BAD_PARAMS, (nested(9), "anything", "params" + ".a" * 8)])
async def test_bad_params_are_422_wherever_they_enter(
        api: Api, params: dict[str, Any], model: str, field: str) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=100)
    before = await me(api, user)
    auth = api.auth(user)
    # Rule create.
    response = await api.client.post("/rules", json={"name": "r", "model": model,
                                                     "params": params}, headers=auth)
    assert_refused(response, field)
    # Rule edit: params alone, and a model whose schema the rule's params break.
    good = {"thumb": {"size": 64}, "bare": {}, "anything": {"ok": True}}[model]
    rule = await post_rule(api, user, model=model, params=good)
    response = await api.client.patch(f"/rules/{rule['id']}", json={"params": params},
                                      headers=auth)
    assert_refused(response, field)
    if model == "bare" and params == {"x": 1}:
        other = await post_rule(api, user, model="anything", params=params)
        response = await api.client.patch(f"/rules/{other['id']}", json={"model": "bare"},
                                          headers=auth)
        assert_refused(response, field)
        await api.client.delete(f"/rules/{other['id']}", headers=auth)
    # Job create: its own params, and its params over a rule's.
    for body in ({"model": model, "params": params}, {"rule_id": rule["id"], "params": params}):
        response = await api.client.post("/jobs", json={"items": items(1), **body},
                                          headers=auth)
        assert_refused(response, field)
    unchanged = await api.client.get(f"/rules/{rule['id']}", headers=auth)
    assert unchanged.json() == rule
    after = await me(api, user)
    assert after["credits"] == before["credits"] and after["concurrency"]["active"] == 0
    assert after["rule_slots"]["used"] == 1
    listed = await api.client.get("/jobs", headers=auth)
    assert listed.json()["items"] == []


async def test_the_bounds_themselves_are_allowed(api: Api) -> None:
    user = api.user()
    deepest = nested(8)
    largest = {"blob": "b" * (16 * 1024 - len('{"blob":""}'))}
    for params in (deepest, largest, {"list": [[[[[[[1]]]]]]]}):
        rule = await post_rule(api, user, model="anything", params=params)
        assert rule["params"] == params
        await api.client.delete(f"/rules/{rule['id']}", headers=api.auth(user))
    too_deep = await api.client.post("/rules", json={"name": "r", "model": "anything", "params": {
        "list": [[[[[[[[1]]]]]]]]}}, headers=api.auth(user))
    assert_refused(too_deep, "params.list[0][0][0][0][0][0][0]")


async def test_a_job_takes_its_rules_preset_and_its_own_fields_win(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=1000)
    rule = await post_rule(api, user, model="thumb", params={"size": 64, "format": "jpeg"},
                           webhook={"url": HOOK, "events": ["completed"]})

    plain = await create_job(api, user, 3, rule_id=rule["id"])
    assert (plain["model"], plain["params"], plain["rule_id"], plain["cost"]) == (
        "thumb", {"size": 64, "format": "jpeg"}, rule["id"], 3 * 2)
    hooks = await api.client.get(f"/jobs/{plain['id']}/webhooks", headers=api.auth(user))
    assert hooks.status_code == 200
    other_params = await create_job(api, user, 1, rule_id=rule["id"], params={"size": 512})
    assert (other_params["model"], other_params["params"]) == ("thumb", {"size": 512})
    other_model = await create_job(api, user, 2, rule_id=rule["id"], model="bare", params={})
    assert (other_model["model"], other_model["params"], other_model["cost"]) == (
        "bare", {}, 2 * 7)
    # The rule's params against the model the job names: refused, naming the field.
    refused = await api.client.post("/jobs", json={"items": items(1), "rule_id": rule["id"],
                                                   "model": "bare"}, headers=api.auth(user))
    assert_refused(refused, "params.size")
    direct = await create_job(api, user, 1, params={"size": 100})
    assert (direct["model"], direct["params"], direct["rule_id"]) == (
        "thumb", {"size": 100}, None)

    # Editing and then deleting the rule changes none of the jobs made from it.
    views = {job["id"]: await job_view(api, user, job["id"])
             for job in (plain, other_params, other_model)}
    patched = await api.client.patch(f"/rules/{rule['id']}", json={
        "model": "anything", "params": {"size": 1, "new": True}, "webhook": None},
        headers=api.auth(user))
    assert patched.status_code == 200, patched.text
    after_edit = await create_job(api, user, 1, rule_id=rule["id"])
    assert (after_edit["model"], after_edit["params"], after_edit["cost"]) == (
        "anything", {"size": 1, "new": True}, 1)
    assert (await api.client.delete(f"/rules/{rule['id']}",
                                    headers=api.auth(user))).status_code == 204
    for job_id, view in views.items():
        assert await job_view(api, user, job_id) == view
    gone = await api.client.post("/jobs", json={"items": items(1), "rule_id": rule["id"]},
                                 headers=api.auth(user))
    assert gone.status_code == 404

    # And in history: cancel them all, flush, read them back (SQL and the API).
    all_jobs = [plain, other_params, other_model, direct, after_edit]
    for job in all_jobs:
        canceled = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
        assert canceled.status_code == 200, canceled.text
    await flush_everything(api)
    rt = await open_runtime(api.settings, SECRET)
    try:
        async with rt.sessions() as session:
            rows = {row.id: row for row in (await session.scalars(select(JobLog).where(
                JobLog.id.in_([job["id"] for job in all_jobs])))).all()}
    finally:
        await rt.close()
    assert {job_id: (row.model, row.params, row.rule_id) for job_id, row in rows.items()} == {
        job["id"]: (job["model"], job["params"], job["rule_id"]) for job in all_jobs}
    for job in all_jobs:
        view = await job_view(api, user, job["id"])
        assert (view["status"], view["params"], view["rule_id"]) == (
            "canceled", job["params"], job["rule_id"])
    assert (await api.client.get(f"/jobs/{plain['id']}",
                                 headers=api.auth(user))).json()["params"] == {
        "size": 64, "format": "jpeg"}


async def test_the_python_client_sends_and_shows_params(api: Api) -> None:
    from service.client import AsyncTollgate, ProblemError

    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=100)  # two jobs at once
    rule = await post_rule(api, user, model="thumb", params={"size": 48})
    async with AsyncTollgate(api.url, api.token(user)) as tg:
        from_rule = await tg.create([("a.png", b"png", "image/png")], rule_id=rule["id"])
        own = await tg.create([("b.png", b"png", "image/png")], params={"size": 32,
                                                                        "format": "jpeg"})
        assert (from_rule.params, from_rule.rule_id, own.params) == (
            {"size": 48}, rule["id"], {"size": 32, "format": "jpeg"})
        assert (await tg.get(own.id)).params == {"size": 32, "format": "jpeg"}
        with pytest.raises(ProblemError) as refused:
            await tg.create([("c.png", b"png", "image/png")], params={"size": 2})
    assert (refused.value.status, refused.value.code) == (422, "validation_error")
