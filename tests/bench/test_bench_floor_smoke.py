"""Smoke test of bench/http_floor.py: it serves its floor app, loads every depth with wrk and
prints one row each, with the server CPU it measured."""

from __future__ import annotations

import re
import shutil
from typing import Any

import pytest

from tests.bench.test_bench_http_smoke import run_script
from tests.conftest import need

DEPTHS = {"POST /jobs (1 item)": ["/any", "/struct/jobs", "/redis/jobs", "/jwt/jobs",
                                  "/sig/jobs"],
          "batched report (8 items)": ["/any", "/struct/report", "/redis/report",
                                       "/mw/report"]}


@pytest.mark.redis
async def test_http_floor_prints_each_depth_with_its_cpu(redis_url: str, real_redis: Any
                                                        ) -> None:
    need("wrk", shutil.which("wrk") is not None, "wrk is not on PATH (apt-get install wrk)")
    output = await run_script("http_floor", "--redis-url", redis_url)
    rows = re.findall(r"^\| (.+?) \| (/\S+) \| (\d+) \((.+?)\) \| ([0-9.]+) \|$", output,
                      re.MULTILINE)
    assert {(body, path) for body, path, *_ in rows} == {
        (body, path) for body, paths in DEPTHS.items() for path in paths}, output
    for body, path, mean, _, ratio in rows:
        assert int(mean) > 0, (body, path)
        if path == "/any":
            assert float(ratio) == 1.0
    assert await real_redis.exists("tgfloor:k") == 0  # it reads a key, never writes one
