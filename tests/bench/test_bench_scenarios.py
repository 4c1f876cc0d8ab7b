"""Every benchmark scenario keeps working: each runs briefly (--quick) as a user starts it
(`python -m bench.<name>`), exits 0, writes its result with a same-run baseline and a ratio
per row, and leaves no process or temp folder behind. No timing is asserted: the numbers
belong to the benchmark's own report."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.harness import Result, Row, markdown, save
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
# Scenario -> the results it writes.
SCENARIOS = {
    "end_to_end": ["end_to_end", "flusher"], "http_api": ["http_api"], "sse": ["sse"],
    "webhook_latency": ["webhook_latency"], "rate_limit": ["rate_limit"],
    "flusher_idle": ["flusher_idle"], "worker_modes": ["worker_modes"],
    "api_keys": ["api_keys"],
    "slow_clients": ["slow_clients"],
    "usage_statement": ["usage_statement"],
    "fairness": ["fairness"],
    "weights": ["weights"],
    "dispatch_cost": ["dispatch_cost"],
}


def bench_folders() -> set[str]:
    return {path.name for path in Path(tempfile.gettempdir()).glob("tgbench-*")}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_runs_quick_and_reports_ratios(scenario: str, tmp_path: Path,
                                                postgres_admin_dsn: str) -> None:
    need("redis-server", shutil.which("redis-server") is not None, "it is not on PATH")
    if scenario == "worker_modes":
        need("torch", importlib.util.find_spec("torch") is not None, "not installed")
    before = bench_folders()
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{scenario}", "--quick", "--out", str(out),
         "--postgres-dsn", postgres_admin_dsn],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert sorted(results) == sorted(SCENARIOS[scenario])
    for name, result in results.items():
        assert result["name"] == name and result["quick"] is True
        assert result["baseline"]["value"] > 0 and result["baseline"]["unit"]
        assert result["rows"] and all(row["ratio"] > 0 for row in result["rows"]), result
        assert f"### {result['title']}" in done.stdout
    assert bench_folders() <= before, "a stack's temp folder was left behind"


def test_results_merge_by_name_and_render_as_tables(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    first = Result("a", "A", "ops/s", Row("base", 10.0, 1.0), [Row("x", 5.0, 0.5, 0.8)])
    save([first], out, quick=False)
    second = Result("b", "B", "ms", Row("base", 2.0, 1.0), [Row("y", 1.0, 2.0, None,
                                                                {"p95": 3.5})], quick=True)
    save([second], out, quick=True)
    stored = json.loads(out.read_text())
    assert sorted(stored) == ["a", "b"] and stored["b"]["quick"] is True
    table = markdown(stored["a"])
    assert "| base (baseline) | 10 | 1 | - |" in table
    assert "| x | 5 | 0.5 ✗ | ≥ 0.8 |" in table
    assert "| y | 1 | 2 | - | 3.5 |" in markdown(stored["b"])
    printed = subprocess.run([sys.executable, "-m", "bench.table", "--results", str(out)],
                             cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    assert "### A" in printed.stdout and "### B (quick run)" in printed.stdout


def test_latest_results_render_and_soak_starts() -> None:
    printed = subprocess.run([sys.executable, "-m", "bench.table"], cwd=ROOT,
                             capture_output=True, text=True, check=True, timeout=60)
    assert "### End to end" in printed.stdout
    soak = subprocess.run([sys.executable, "-m", "bench.soak", "--help"], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=60)
    assert soak.returncode == 0 and "--minutes" in soak.stdout, soak.stderr


