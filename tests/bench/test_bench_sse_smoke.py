"""bench/sse.py keeps working: a short run on its own redis-server writes every phase."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.bench.test_bench_smoke import run_script
from tests.conftest import need


async def test_sse_bench_measures_each_phase(postgres_admin_dsn: str, tmp_path: Path) -> None:
    need("redis-server", shutil.which("redis-server") is not None, "it is not on PATH")
    await run_script("sse", "--out", str(tmp_path), "--postgres-dsn", postgres_admin_dsn)
    result = json.loads((tmp_path / "sse.json").read_text())
    rows = {row["label"]: row["extra"] for row in result["rows"]}
    assert set(rows) == {"1 stream", "20 streams", "SPUBLISH: 20 subscribed"}
    # An open stream costs its job's change counter, read every poll: a few commands/s.
    assert 1 <= rows["20 streams"]["per_stream_commands_per_s"] <= 10
    assert rows["20 streams"]["latency_max_ms"] > 0
