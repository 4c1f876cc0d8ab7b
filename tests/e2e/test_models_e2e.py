"""Two models on two queues, each served by its own `tollgate worker --model` process: every
job runs on its model's worker and is charged at its model's price."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service.history.models import JobLog, LedgerEntry
from service.runtime import open_runtime
from tests.api.conftest import SECRET, Api
from tests.api.flow import create_job, me, upload_all
from tests.api.history import flush_everything
from tests.e2e.conftest import Workers

PRICES = {"cheap": 1, "dear": 5}


@pytest.fixture
def settings_overrides(tmp_path: Path, key_prefix: str) -> dict[str, Any]:
    path = tmp_path / "models.toml"
    path.write_text(f"""
[models.cheap]
processor = "workers.processors.noop:passthrough"
price_per_item = {PRICES["cheap"]}
queue = "{key_prefix}-cheap"
batch_size = 2
default = true

[models.dear]
processor = "workers.processors.noop:fail_odd"
price_per_item = {PRICES["dear"]}
queue = "{key_prefix}-dear"
batch_size = 3
""")
    return {"lease_ttl": 5, "models": str(path)}


async def submit(api: Api, user: str, n: int, model: str) -> str:
    job = await create_job(api, user, n, model=model)
    assert job["cost"] == n * PRICES[model]
    await upload_all(job)
    for action, status in (("confirm-upload", 200), ("execute", 202)):
        response = await api.client.post(f"/jobs/{job['id']}/{action}", headers=api.auth(user))
        assert response.status_code == status, response.text
    job_id: str = job["id"]
    return job_id


async def test_two_models_run_on_their_own_workers_at_their_own_prices(
        api: Api, workers: Workers) -> None:
    users = [api.user(), api.user()]
    for user in users:
        await api.admin_create_user(user, plan="pro", credits=200)
    jobs = [(users[0], await submit(api, users[0], 5, "cheap"), "cheap"),
            (users[0], await submit(api, users[0], 4, "dear"), "dear"),
            (users[1], await submit(api, users[1], 7, "dear"), "dear"),
            (users[1], await submit(api, users[1], 3, "cheap"), "cheap")]

    # Each worker serves only its model: the processor comes with the model, not the env.
    await asyncio.gather(
        asyncio.to_thread(workers.run_burst, "tests.e2e.no_such:processor", model="cheap"),
        asyncio.to_thread(workers.run_burst, "tests.e2e.no_such:processor", model="dear"))

    spent = {user: 0 for user in users}
    for user, job_id, model in jobs:
        view = (await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))).json()
        total = view["total_items"]
        # The dear worker runs fail_odd (odd items fail); the cheap one passes all through.
        done = (total + 1) // 2 if model == "dear" else total
        assert (view["model"], view["status"], view["done_items"]) == (model, "done", done)
        assert view["charged"] == done * PRICES[model]
        assert view["refunded"] == (total - done) * PRICES[model]
        spent[user] += view["charged"]
    for user in users:
        credits = (await me(api, user))["credits"]
        assert credits.pop("grants")[0]["remaining"] == 200 - spent[user]
        assert credits == {"available": 200 - spent[user], "reserved": 0,
                           "spent": spent[user], "granted": 200}

    await flush_everything(api)
    rt = await open_runtime(api.settings, SECRET)
    try:
        async with rt.sessions() as session:
            rows = {row.id: row for row in (await session.scalars(select(JobLog).where(
                JobLog.id.in_([job_id for _, job_id, _ in jobs])))).all()}
            charges = (await session.scalars(select(LedgerEntry).where(
                LedgerEntry.kind == "charge", LedgerEntry.user_id.in_(users)))).all()
    finally:
        await rt.close()
    for _, job_id, model in jobs:
        row = rows[job_id]
        assert (row.model, row.price, row.charged) == (
            model, PRICES[model], row.done_items * PRICES[model])
    assert -sum(entry.amount for entry in charges) == sum(spent.values())
