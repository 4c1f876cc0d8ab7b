"""A job made from a rule runs, on a real `tollgate worker`, with the rule's params as they
were when the job was created, at the rule's model's price: editing or deleting the rule
afterwards changes neither (issue 14)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from service.history.models import JobLog
from service.runtime import open_runtime
from tests.api.conftest import SECRET, Api
from tests.api.flow import PNG_BYTES, items, me, upload_all
from tests.api.history import flush_everything
from tests.e2e.conftest import Workers

PRICES = {"cheap": 1, "dear": 5}
SCHEMA = """
[models.{name}.params_schema]
type = "object"
required = ["level"]
additionalProperties = false
properties.level = {{ type = "integer", minimum = 0, maximum = 9 }}
properties.tags = {{ type = "array", items = {{ type = "string" }} }}
"""


@pytest.fixture
def settings_overrides(tmp_path: Path, key_prefix: str) -> dict[str, Any]:
    path = tmp_path / "models.toml"
    path.write_text("".join(f"""
[models.{name}]
processor = "tests.e2e.params_processor:echo_params"
price_per_item = {price}
queue = "{key_prefix}-{name}"
batch_size = 2
""" + SCHEMA.format(name=name) for name, price in PRICES.items()))
    return {"lease_ttl": 5, "models": str(path)}


async def new_job(api: Api, user: str, n: int, **body: Any) -> dict[str, Any]:
    response = await api.client.post("/jobs", json={"items": items(n), **body},
                                     headers=api.auth(user))
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    await upload_all(job)
    return job


async def run(api: Api, user: str, job_id: str) -> None:
    for action, status in (("confirm-upload", 200), ("execute", 202)):
        response = await api.client.post(f"/jobs/{job_id}/{action}", headers=api.auth(user))
        assert response.status_code == status, response.text


async def test_a_job_runs_with_its_rules_params_as_they_were_when_it_was_made(
        api: Api, workers: Workers) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=500)
    auth = api.auth(user)
    created = await api.client.post("/rules", json={
        "name": "level one", "model": "dear", "params": {"level": 1, "tags": ["a", "b"]}},
        headers=auth)
    assert created.status_code == 201, created.text
    rule = created.json()

    first = await new_job(api, user, 3, rule_id=rule["id"])  # dear, level 1
    edited = await api.client.patch(f"/rules/{rule['id']}", json={
        "model": "cheap", "params": {"level": 2}}, headers=auth)
    assert edited.status_code == 200, edited.text
    second = await new_job(api, user, 2, rule_id=rule["id"])  # cheap, level 2
    third = await new_job(api, user, 2, rule_id=rule["id"], params={"level": 3})  # its own
    fourth = await new_job(api, user, 1, rule_id=rule["id"], model="dear")  # rule's params
    # Edited again, then deleted, before any of them is even queued.
    await api.client.patch(f"/rules/{rule['id']}", json={"params": {"level": 9}}, headers=auth)
    assert (await api.client.delete(f"/rules/{rule['id']}", headers=auth)).status_code == 204
    expected = {  # job id -> (model, params, items)
        first["id"]: ("dear", {"level": 1, "tags": ["a", "b"]}, 3),
        second["id"]: ("cheap", {"level": 2}, 2),
        third["id"]: ("cheap", {"level": 3}, 2),
        fourth["id"]: ("dear", {"level": 2}, 1),
    }
    for job_id in expected:
        await run(api, user, job_id)

    await asyncio.gather(*(
        asyncio.to_thread(workers.run_burst, "tests.e2e.no_such:processor", model=model)
        for model in PRICES))

    spent = 0
    async with httpx.AsyncClient(timeout=30) as raw:
        for job_id, (model, params, n) in expected.items():
            view = (await api.client.get(f"/jobs/{job_id}", headers=auth)).json()
            assert (view["status"], view["done_items"], view["model"], view["params"],
                    view["rule_id"]) == ("done", n, model, params, rule["id"])
            assert view["charged"] == n * PRICES[model] and view["refunded"] == 0
            spent += view["charged"]
            for item in view["items"]:
                result = await raw.get(item["result_url"])
                assert result.status_code == 200, result.text
                assert json.loads(result.content) == {
                    "params": params, "read_only": "mappingproxy",
                    "input": PNG_BYTES.decode("latin-1")}
    credits = (await me(api, user))["credits"]
    assert credits.pop("grants")[0]["remaining"] == 500 - spent
    assert credits == {
        "available": 500 - spent, "reserved": 0, "spent": spent, "granted": 500}

    await flush_everything(api)
    rt = await open_runtime(api.settings, SECRET)
    try:
        async with rt.sessions() as session:
            rows = (await session.scalars(select(JobLog).where(
                JobLog.id.in_(list(expected))))).all()
    finally:
        await rt.close()
    assert {row.id: (row.model, row.params, row.rule_id, row.price, row.charged)
            for row in rows} == {
        job_id: (model, params, rule["id"], PRICES[model], n * PRICES[model])
        for job_id, (model, params, n) in expected.items()}
