"""bench/sweeper_scale.py keeps working: a short run on its own redis-server writes both
results, and an idle pass with the due index costs a fixed handful of Redis commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from service.state.keys import DUE_SHARDS
from tests.bench.test_bench_smoke import run_script
from tests.conftest import need


async def test_sweeper_scale_bench_measures_the_idle_pass_and_the_drains(tmp_path: Path) -> None:
    need("redis-server", shutil.which("redis-server") is not None, "it is not on PATH")
    await run_script("sweeper_scale", "--out", str(tmp_path))
    idle = json.loads((tmp_path / "sweeper_idle.json").read_text())
    (now,) = idle["rows"]
    # Before: every bucket's claim and reads; now: one script and its ZRANGEBYSCORE a shard.
    assert idle["baseline"]["extra"]["redis_commands_per_pass"] > 4 * idle["params"]["buckets"]
    assert now["extra"]["redis_commands_per_pass"] <= 2 * DUE_SHARDS
    assert now["ratio"] > 10
    drain = json.loads((tmp_path / "sweeper_drain.json").read_text())
    assert [row["label"] for row in drain["rows"]] == [
        "drain: one user's jobs, one bucket (now)", "drain: one user's jobs, one bucket (before)",
        "drain: spread over 8 buckets (before)"]
    heavy_now, heavy_before, _ = drain["rows"]
    assert heavy_now["extra"]["passes"] == 1  # retaken within the pass
    assert heavy_before["extra"]["passes"] > 1
