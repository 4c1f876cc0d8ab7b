"""bench/listing.py keeps working: a short run prints both ratios and the targets' standing."""

from __future__ import annotations

import re

import pytest

from tests.bench.test_bench_smoke import run_script


@pytest.mark.redis
@pytest.mark.postgres
async def test_listing_bench_prints_its_ratios(redis_url: str, postgres_admin_dsn: str) -> None:
    output = await run_script("listing", "--redis-url", redis_url,
                              "--postgres", postgres_admin_dsn)
    assert re.search(r"10,000 live jobs: +[\d.]+ ms +ratio to 10 live: +[\d.]+", output), output
    assert re.search(r"history page [\d,]+: +[\d.]+ ms +ratio to page 1: +[\d.]+", output)
    assert "targets: 10,000 live <= 2x 10 live:" in output
