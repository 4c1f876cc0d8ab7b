"""Models over HTTP on real Redis, PostgreSQL and S3: GET /models, a job's model and price,
the model's queue and batch size, and a price fixed when the job is created."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from rq import Queue

from service.contract import SERIALIZER
from service.runtime import open_runtime
from service.settings import Settings
from tests.api.conftest import SECRET, Api, ServerThread
from tests.api.flow import callback, create_job, items, me, report_item, upload_all
from tests.api.history import flush_everything
from tests.api.scheduling import dispatcher, one_pass, register_worker
from tests.conftest import free_port

MODELS = """
[models.thumbnail]
processor = "workers.processors.thumbnail:make_thumbnails"
price_per_item = 1
queue = "{prefix}-thumb"
batch_size = 2
content_types = ["image/*"]
description = "256 px PNG thumbnails"
default = true

[models.heavy]
processor = "workers.processors.noop:passthrough"
price_per_item = {heavy_price}
queue = "{prefix}-heavy"
batch_size = 3
max_items = 4
content_types = ["image/png"]
description = "a pricier model"

[models.heavy.params_schema]
type = "object"
properties = {{ strength = {{ type = "integer" }} }}
"""


def models_file(folder: Path, prefix: str, heavy_price: int) -> str:
    path = folder / f"models-{heavy_price}.toml"
    path.write_text(MODELS.format(prefix=prefix, heavy_price=heavy_price))
    return str(path)


@pytest.fixture
def settings_overrides(tmp_path: Path, key_prefix: str) -> dict[str, Any]:
    return {"models": models_file(tmp_path, key_prefix, 3)}


def rq_ids(api: Api, queue_name: str) -> list[str]:
    connection = redis.Redis.from_url(api.settings.redis_url or "")
    try:
        return list(Queue(queue_name, connection=connection, serializer=SERIALIZER)
                    .get_job_ids())
    finally:
        connection.close()


async def submit(api: Api, user: str, n: int, model: str | None) -> dict[str, Any]:
    job = await create_job(api, user, n, **({"model": model} if model else {}))
    await upload_all(job)
    for step, status in (("confirm-upload", 200), ("execute", 202)):
        response = await api.client.post(f"/jobs/{job['id']}/{step}", headers=api.auth(user))
        assert response.status_code == status, response.text
    return job


async def test_get_models_lists_every_model_with_its_price_and_limits(api: Api) -> None:
    response = await api.client.get("/models", headers=api.auth(api.user()))
    assert response.status_code == 200, response.text
    thumbnail, heavy = response.json()["items"]
    assert thumbnail == {
        "name": "thumbnail", "description": "256 px PNG thumbnails", "price_per_item": 1,
        "max_items": api.settings.max_items, "content_types": ["image/*"], "default": True,
        "params_schema": None, "available": True, "workers": 0, "queued_items": 0}
    assert heavy == {
        "name": "heavy", "description": "a pricier model", "price_per_item": 3, "max_items": 4,
        "content_types": ["image/png"], "default": False,
        "params_schema": {"type": "object", "properties": {"strength": {"type": "integer"}}},
        "available": True, "workers": 0, "queued_items": 0}
    assert (await api.client.get("/models")).status_code == 401


async def test_a_job_costs_its_models_price_and_shows_its_model(api: Api) -> None:
    user = api.user()
    job = await create_job(api, user, 3, model="heavy")
    assert (job["model"], job["cost"]) == ("heavy", 9)
    assert (await me(api, user))["credits"]["reserved"] == 9
    view = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert (view["model"], view["cost"]) == ("heavy", 9)

    default = await create_job(api, api.user(), 2)
    assert (default["model"], default["cost"]) == ("thumbnail", 2)


async def test_model_refusals(api: Api) -> None:
    user = api.user()
    auth = api.auth(user)

    async def post(body: dict[str, Any]) -> httpx.Response:
        return await api.client.post("/jobs", json=body, headers=auth)

    unknown = await post({"items": items(1), "model": "nope"})
    assert (unknown.status_code, unknown.json()["code"]) == (422, "unknown_model")
    text = [{"name": "a.txt", "content_type": "text/plain", "size": 3}]
    refused = await post({"items": text})
    assert (refused.status_code, refused.json()["code"]) == (422, "validation_error")
    jpeg = [{"name": "a.jpg", "content_type": "image/jpeg", "size": 3}]
    assert (await post({"items": jpeg})).status_code == 201  # thumbnail takes image/*
    refused = await post({"items": jpeg, "model": "heavy"})
    assert (refused.status_code, refused.json()["code"]) == (422, "validation_error")
    assert "image/jpeg" in refused.json()["detail"]
    too_many = await post({"items": items(5), "model": "heavy"})
    assert (too_many.status_code, too_many.json()["code"]) == (422, "validation_error")
    assert (await me(api, user))["credits"]["reserved"] == 1  # only the jpeg job holds


async def test_execute_enqueues_on_the_models_queue_in_its_batch_size(api: Api) -> None:
    prefix = api.settings.key_prefix
    rich = [api.user(), api.user()]
    for user in rich:
        await api.admin_create_user(user, credits=100)
    heavy = await submit(api, rich[0], 4, "heavy")
    thumb = await submit(api, rich[1], 4, None)
    rt = await open_runtime(api.settings, SECRET)
    try:  # a live worker on each queue, and the dispatcher hands the work there
        for queue in (f"{prefix}-heavy", f"{prefix}-thumb"):
            register_worker(rt, queue, queue)
        await one_pass(dispatcher(rt))
    finally:
        await rt.close()
    assert sorted(rq_ids(api, f"{prefix}-heavy")) == [f"tg-{heavy['id']}-0",
                                                       f"tg-{heavy['id']}-1"]
    assert sorted(rq_ids(api, f"{prefix}-thumb")) == [f"tg-{thumb['id']}-0",
                                                       f"tg-{thumb['id']}-1"]
    assert rq_ids(api, api.settings.queue_name) == []


@pytest.fixture
async def repriced(api: Api, tmp_path: Path) -> AsyncIterator[Api]:
    """A second API on the same services whose models file prices `heavy` at 7."""
    port = free_port()
    settings = Settings(**{**api.settings.model_dump(), "public_url": f"http://127.0.0.1:{port}",
                           "models": models_file(tmp_path, api.settings.key_prefix, 7)})
    with ServerThread(settings, port):
        async with httpx.AsyncClient(base_url=settings.public_url, timeout=30) as client:
            yield Api(settings.public_url, settings, client)


async def test_a_price_change_never_reprices_a_live_job(api: Api, repriced: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=100)
    job = await submit(api, user, 4, "heavy")  # priced at 3 by the first API
    assert job["cost"] == 12
    later = await create_job(repriced, user, 1, model="heavy")
    assert later["cost"] == 7  # the new price is for new jobs only

    # The repriced API takes the old job's reports and settles it.
    await callback(repriced, job["id"], user, idempotency_key="s", event="started")
    for index in range(4):
        await report_item(repriced, job["id"], user, index, ok=index != 3)
    view = (await repriced.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert (view["status"], view["charged"], view["refunded"]) == ("done", 9, 3)
    credits = (await me(repriced, user))["credits"]
    assert credits["spent"] == 9 and credits["reserved"] == 7

    await flush_everything(api)  # into jobs_log, with its model
    history = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert (history["model"], history["cost"], history["charged"]) == ("heavy", 12, 9)


@pytest.fixture
async def without_heavy(api: Api, tmp_path: Path) -> AsyncIterator[Api]:
    """A second API on the same services whose models file no longer has `heavy`."""
    port = free_port()
    path = tmp_path / "thumbnail-only.toml"
    path.write_text(MODELS.split("[models.heavy]")[0].format(prefix=api.settings.key_prefix))
    settings = Settings(**{**api.settings.model_dump(), "public_url": f"http://127.0.0.1:{port}",
                           "models": str(path)})
    with ServerThread(settings, port):
        async with httpx.AsyncClient(base_url=settings.public_url, timeout=30) as client:
            yield Api(settings.public_url, settings, client)


async def test_a_job_whose_model_left_the_configuration_fails_refunded_at_dispatch(
        api: Api, without_heavy: Api) -> None:
    user = api.user()
    job = await create_job(api, user, 2, model="heavy")
    await upload_all(job)
    confirmed = await api.client.post(f"/jobs/{job['id']}/confirm-upload", headers=api.auth(user))
    assert confirmed.status_code == 200
    executed = await without_heavy.client.post(f"/jobs/{job['id']}/execute",
                                               headers=api.auth(user))
    assert executed.status_code == 202, executed.text
    answered = executed.json()  # the state after dispatch, not the `queued` read before it
    assert (answered["status"], answered["charged"], answered["refunded"]) == ("failed", 0, 6)
    assert "no longer served" in answered["reason"]
    view = (await without_heavy.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert view == answered
    assert rq_ids(api, f"{api.settings.key_prefix}-heavy") == []
    assert (await me(api, user))["credits"]["reserved"] == 0
