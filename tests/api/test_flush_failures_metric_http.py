"""GET /metrics reports tollgate_flush_failures_total from the buckets' Redis counters, so
every API process shows the count the flusher process kept."""

from __future__ import annotations

import re
from typing import Any

import pytest

from service.state.keys import KeySpace
from service.state.store import Core
from tests.api.conftest import Api
from tests.api.flow import me

pytestmark = pytest.mark.redis


def flush_failures(metrics: str) -> float:
    match = re.search(r"^tollgate_flush_failures_total (\S+)$", metrics, re.MULTILINE)
    assert match, metrics
    return float(match[1])


async def test_metrics_count_the_records_the_flusher_set_aside(api: Api, real_redis: Any
                                                               ) -> None:
    assert flush_failures((await api.client.get("/metrics")).text) == 0
    core = Core(real_redis, KeySpace(api.settings.key_prefix, api.settings.buckets))
    users = [api.user(), api.user()]
    for user in users:
        await me(api, user)  # provisioned: its bucket now holds work a scrape reads
    for user, record in zip(users, ("job-a", "job-b"), strict=True):
        await core.flush_retry_end(core.keys.bucket_of_user(user), "job", record, "",
                                   set_aside=True)
    # Written after a retry: not a failure.
    await core.flush_retry_end(core.keys.bucket_of_user(users[0]), "job", "job-c", "",
                               set_aside=False)
    after = await api.client.get("/metrics")
    assert after.status_code == 200
    assert "# TYPE tollgate_flush_failures_total counter" in after.text
    assert flush_failures(after.text) == 2
    assert "tollgate_requests_total" in after.text  # the request metrics are still there
