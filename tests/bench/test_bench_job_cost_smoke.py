"""bench/job_cost.py (per-item CPU over a job's whole life, this checkout against an
earlier one) and bench/worker_modes.py (in-process against forked workers, the torch
processor) keep working: each runs briefly (--quick) as a user would start it, exits 0,
writes its result files with the expected rows and leaves no database or process behind.
No timing is asserted: the numbers belong to the benchmarks' reports."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from bench.job_cost import Measure, Params, Phase, result_for
from tests.bench.test_bench_http_smoke import database_exists, run_script
from tests.conftest import need

PER_ITEM = ("api_us_per_item", "api_submit_us_per_item", "redis_us_per_item",
            "worker_us_per_item")


def databases_of(output: str) -> list[str]:
    names = re.findall(r"^database (tgbench_[0-9a-f]+) ", output, re.MULTILINE)
    assert names, output
    return names


def measure(kind: str, run_s: float, cpu: float) -> Measure:
    m = Measure(kind, "local", jobs=10, items=8)
    for name in ("submit", "run", "results"):
        m.phases[name] = Phase(seconds=run_s, api_s=cpu, redis_s=cpu / 10, worker_s=cpu / 2)
    return m


def test_the_after_row_carries_items_per_s_and_cpu_ratios_to_the_before() -> None:
    params = Params(before="/b", storages=("local",), jobs=10, items=8, rounds=2)
    measures = {"before": [measure("before", 2.0, 0.4), measure("before", 2.0, 0.4)],
                "after": [measure("after", 1.0, 0.2), measure("after", 1.0, 0.2)]}
    result = result_for("local", params, measures, {"before": "b", "after": "a"}, {}, True)

    assert result.baseline.label == "before: b, local" and result.baseline.ops_per_s == 40
    [row] = result.rows
    assert row.ops_per_s == 80 and row.ratio == 2 and row.target == 2
    assert row.extra["api_us_per_item"] == 0.6 * 1e6 / 80  # three phases of 0.2 s, 80 items
    for part in ("api", "api_submit", "redis", "worker"):
        assert row.extra[f"{part}_cpu_ratio"] == 2
    assert row.extra["round_ratios"] == [2, 2]


@pytest.mark.redis
@pytest.mark.postgres
async def test_job_cost_measures_a_whole_job_life_on_local_and_s3_storage(
    postgres_admin_dsn: str, tmp_path: Path,
) -> None:
    need("S3 (moto server)", importlib.util.find_spec("moto") is not None,
         "moto[server] is not installed")
    output = await run_script("job_cost", "--out", str(tmp_path), "--postgres-dsn",
                              postgres_admin_dsn, "--storage", "local,s3", "--jobs", "2")

    for storage in ("local", "s3"):
        result = json.loads((tmp_path / f"job_cost_{storage}.json").read_text())
        assert result["quick"] is True and result["params"]["storage"] == storage
        [row] = result["rows"]
        assert row["label"].startswith("after: ") and row["label"].endswith(storage)
        assert row["target"] == 2.0 and row["ops_per_s"] > 0
        for key in PER_ITEM:
            assert row["extra"][key] >= 0
        assert row["extra"]["api_us_per_item"] > 0 and row["extra"]["worker_us_per_item"] > 0
    for name in databases_of(output):
        assert not await database_exists(postgres_admin_dsn, name)


@pytest.mark.postgres
async def test_worker_modes_compares_in_process_with_forked_on_the_torch_processor(
    postgres_admin_dsn: str, tmp_path: Path,
) -> None:
    pytest.importorskip("torch", reason="SKIPPED: torch (the gpu extra) is not installed")
    output = await run_script("worker_modes", "--out", str(tmp_path), "--postgres-dsn",
                              postgres_admin_dsn, "--items", "16")

    result = json.loads((tmp_path / "worker_modes.json").read_text())
    assert result["baseline"]["label"].startswith("forked work-horse per batch")
    [row] = result["rows"]
    assert row["label"].startswith("in-process, setup() once")
    for extra in (result["baseline"]["extra"], row["extra"]):
        assert extra["per_batch_s"] > 0 and extra["first_batch_s"] > 0
        assert extra["wall_s"] >= extra["first_batch_s"]
        assert [r["batches"] for r in extra["rounds"]] == [2]
    assert row["ratio"] > 0
    for name in databases_of(output):
        assert not await database_exists(postgres_admin_dsn, name)
