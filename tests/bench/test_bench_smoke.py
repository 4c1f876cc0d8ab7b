"""The benchmarks keep working: each script runs briefly (--quick) as a user would start it,
exits 0, writes its result file with the expected rows and leaves no state behind.
No timing is asserted: the numbers belong to the benchmark's own report."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import plot
from bench.common import Baseline, Result, Row, closed_loop, format_table
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]


async def run_script(name: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    text = output.decode()
    assert proc.returncode == 0, text
    return text


async def leftover_keys(client: Any, prefix: str) -> list[str]:
    return [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]


@pytest.mark.redis
async def test_lua_core_reports_each_operation_against_ping(
    redis_url: str, real_redis: Any, key_prefix: str, tmp_path: Path
) -> None:
    output = await run_script("lua_core", "--out", str(tmp_path), "--redis-url", redis_url,
                              "--prefix", key_prefix, "--seconds", "0.1")

    result = json.loads((tmp_path / "lua_core.json").read_text())
    assert result["name"] == "lua_core" and result["quick"] is True
    assert result["baseline"]["label"].startswith("ping")
    assert [row["label"] for row in result["rows"]] == [
        "reserve", "item_result", "settle", "item_result, auto-pipelined (as the API sends it)"]
    for row in result["rows"]:
        assert row["extra"]["calls"] > 0 and row["ratio"] > 0
    assert [row["target"] for row in result["rows"]] == [0.5, 0.5, 0.5, None]
    assert {"nproc", "cpu_model", "python", "redis_server"} <= result["machine"].keys()
    assert "| reserve |" in output and "(baseline)" in output
    assert await leftover_keys(real_redis, key_prefix) == []


async def test_lua_core_on_a_private_redis_counts_only_its_own_calls(tmp_path: Path) -> None:
    need("redis-server", shutil.which("redis-server") is not None, "it is not on PATH")
    await run_script("lua_core", "--out", str(tmp_path), "--private-redis", "--seconds", "0.1")

    result = json.loads((tmp_path / "lua_core.json").read_text())
    for entry in (result["baseline"], *result["rows"]):
        assert entry["extra"]["foreign_script_calls"] == 0


async def benchmark_databases(admin_dsn: str) -> set[str]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(admin_dsn) as conn:
        rows = await (await conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'tgbench%'")).fetchall()
    return {row[0] for row in rows}


@pytest.mark.redis
@pytest.mark.postgres
async def test_reserve_alternatives_verify_no_overspend_in_every_variant(
    redis_url: str, postgres_admin_dsn: str, real_redis: Any, key_prefix: str, tmp_path: Path
) -> None:
    databases_before = await benchmark_databases(postgres_admin_dsn)
    await run_script("reserve_alternatives", "--out", str(tmp_path), "--redis-url", redis_url,
                     "--prefix", key_prefix, "--postgres-dsn", postgres_admin_dsn)

    result = json.loads((tmp_path / "reserve_alternatives.json").read_text())
    assert result["baseline"]["label"] == "PostgreSQL FOR UPDATE, synchronous_commit=off"
    rows = {row["label"]: row for row in result["rows"]}
    assert list(rows) == ["Lua script (Core.reserve)", "WATCH/MULTI (redis-py)",
                          "PostgreSQL FOR UPDATE, synchronous_commit=on"]
    users = result["params"]["users"]
    affordable = result["params"]["affordable_per_user"]
    for extra, key in ((rows["Lua script (Core.reserve)"]["extra"], "lua"),
                       (rows["WATCH/MULTI (redis-py)"]["extra"], "watch"),
                       (result["baseline"]["extra"], "pg_off"),
                       (rows["PostgreSQL FOR UPDATE, synchronous_commit=on"]["extra"], "pg_on")):
        assert extra["verified"] is True
        assert extra["successes"] == users * affordable[key]
        assert extra["attempts"] > extra["successes"]
        assert extra["refused_credits"] > 0 and extra["refused_slots"] > 0
    assert "retries" in rows["WATCH/MULTI (redis-py)"]["extra"]
    assert await leftover_keys(real_redis, key_prefix) == []
    assert await benchmark_databases(postgres_admin_dsn) == databases_before


def sample_result(name: str, rows: int) -> Result:
    return Result(
        name=name, title=f"{name} sample", machine={"nproc": 2, "cpu_model": "test"},
        params={}, baseline=Baseline("base", 1000.0),
        rows=[Row(f"row {i}", 100.0 * (i + 1), 0.1 * (i + 1), 0.5 if i == 0 else None,
                  {"server_cpu_ratio": 0.2} if i == 1 else {}) for i in range(rows)],
    )


def test_plot_draws_one_png_from_any_number_of_result_files(tmp_path: Path) -> None:
    sample_result("first", 1).write(tmp_path)
    sample_result("second", 4).write(tmp_path)
    (tmp_path / "notes.json").write_text('{"something": "else"}')
    out = tmp_path / "ratios.png"

    assert plot.main(["--results", str(tmp_path), "--out", str(out)]) == 0

    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["name"] for r in plot.load_results(tmp_path)] == ["first", "second"]


def test_table_shows_the_baseline_first_and_marks_targets() -> None:
    table = format_table(sample_result("t", 2))
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| base (baseline) | 1,000 | 1.00 |")
    assert "| row 0 | 100 | 0.10 ✗ | ≥ 0.5 |" in lines[2]
    assert "| row 1 | 200 | 0.20 | - |" in lines[3]


async def test_closed_loop_hands_out_every_index_once_up_to_the_limit() -> None:
    seen: list[int] = []

    async def call(index: int) -> None:
        await asyncio.sleep(0)
        seen.append(index)

    timing = await closed_loop(call, tasks=7, limit=100)
    assert sorted(seen) == list(range(100))
    assert timing.calls == 100 and len(timing.latencies_ms) == 100
