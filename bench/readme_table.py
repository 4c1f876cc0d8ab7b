"""Writes the latest bench/results/*.json into README.md between the bench markers.

    python bench/readme_table.py          # after running the benchmarks
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/readme_table.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import format_cell

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
ORDER = ["lua_core", "reserve_alternatives", "http_api_granian_1p", "http_api_granian_2p",
         "http_api_uvicorn_1p", "http_api_uvicorn_2p", "http_servers", "end_to_end",
         "job_cost_local", "job_cost_s3", "worker_modes", "flusher"]


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


# Extra columns a result shows when any of its rows carries them.
EXTRA = [("ratio_to_bare_post", "ratio to bare POST"),
         ("ratio_to_bare_post_same_body", "ratio to bare POST, same body"),
         ("target_vs_same_body", "target (same body)"),
         ("server_cpu_us_per_request", "server CPU µs/req"),
         # end_to_end
         ("ratio_range", "ratio range (legs)"), ("items_per_s", "items/s"),
         # job_cost_*: CPU per item over a job's whole life, before/after ratios (target 2)
         ("items_per_s_range", "items/s (rounds)"),
         ("api_us_per_item", "API µs/item"), ("api_cpu_ratio", "API ratio"),
         ("redis_us_per_item", "Redis µs/item"), ("redis_cpu_ratio", "Redis ratio"),
         ("worker_us_per_item", "worker µs/item"), ("worker_cpu_ratio", "worker ratio"),
         # worker_modes
         ("per_batch_s", "median per batch, s"), ("first_batch_s", "first batch, s"),
         ("wall_s", "wall, s")]


def section(result: dict[str, Any]) -> str:
    machine = result["machine"]
    extra = [(key, title) for key, title in EXTRA
             if any(key in row.get("extra", {}) for row in result["rows"])]
    lines = [f"**{result['title']}**", "",
             f"<sub>{machine.get('nproc')} CPUs ({machine.get('cpu_model')}), "
             f"{machine.get('python')}, Redis {machine.get('redis_server', '?')}, "
             f"load avg at start {machine.get('loadavg_at_start', ['?'])[0]}, "
             f"{result['created_at'][:16]}Z</sub>", "",
             "| | ops/s | ratio | target |" + "".join(f" {t} |" for _, t in extra),
             "|---|---:|---:|---:|" + "---:|" * len(extra),
             f"| {result['baseline']['label']} (baseline) | "
             f"{_num(result['baseline']['ops_per_s'])} | 1.00 | |"
             + "".join(f" {format_cell(result['baseline'].get('extra', {}).get(k))} |"
                       for k, _ in extra)]
    for row in result["rows"]:
        target = f"≥ {row['target']}" if row.get("target") else ""
        lines.append(f"| {row['label']} | {_num(row['ops_per_s'])} | {row['ratio']:.2f} | "
                     f"{target} |" + "".join(f" {format_cell(row.get('extra', {}).get(k))} |"
                                             for k, _ in extra))
    return "\n".join(lines)


def main() -> None:
    found = {path.stem: json.loads(path.read_text()) for path in RESULTS.glob("*.json")}
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    body = "\n\n".join(section(found[name]) for name in names)
    body += "\n\n![ratios](bench/results/ratios.png)"
    readme = (ROOT / "README.md").read_text()
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    (ROOT / "README.md").write_text(f"{head}{START}\n{body}\n{END}{tail}")
    print(f"README.md: {len(names)} result tables")


if __name__ == "__main__":
    main()
