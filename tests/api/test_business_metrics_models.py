"""Business metrics by model: the `model` label is the job's model, and every model's RQ
queue has its own tollgate_queue_depth (real API, Redis, PostgreSQL, S3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.api.flow import report_item
from tests.api.scheduling import drain
from tests.api.test_business_metrics import scrape, value
from tests.api.test_models_http import models_file, submit


@pytest.fixture
def settings_overrides(tmp_path: Path, key_prefix: str) -> dict[str, Any]:
    return {"models": models_file(tmp_path, key_prefix, 3)}


async def test_jobs_and_items_carry_their_model_and_each_queue_its_depth(api: Api) -> None:
    prefix = api.settings.key_prefix
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=100)
    heavy = await submit(api, user, 4, "heavy")  # batches of 3: two batches
    thumb = await submit(api, user, 1, None)  # the default model, batches of 2: one
    await drain(api.settings)
    samples = await scrape(api)
    assert value(samples, "tollgate_queue_depth", queue=f"{prefix}-heavy") == 2
    assert value(samples, "tollgate_queue_depth", queue=f"{prefix}-thumb") == 1
    for index in range(4):
        await report_item(api, heavy["id"], user, index, ok=index != 0)
    await report_item(api, thumb["id"], user, 0)
    samples = await scrape(api)
    assert value(samples, "tollgate_jobs_total", model="heavy", status="done") == 1
    assert value(samples, "tollgate_jobs_total", model="thumbnail", status="done") == 1
    assert value(samples, "tollgate_items_total", model="heavy", outcome="ok") == 3
    assert value(samples, "tollgate_items_total", model="heavy", outcome="failed") == 1
    assert value(samples, "tollgate_items_total", model="thumbnail", outcome="ok") == 1
    assert value(samples, "tollgate_credits_total", kind="charged") == 3 * 3 + 1
