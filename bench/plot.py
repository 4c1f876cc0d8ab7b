"""Draws the ratios of every result file in bench/results/*.json into one PNG.

    python bench/plot.py [--results bench/results] [--out bench/results/ratios.png]

One panel per benchmark: a bar per row (its ratio to the benchmark's own baseline, which is
the line at 1), the target as a red mark, and, where a row carries `server_cpu_ratio` in its
extra (the server's CPU time per call, baseline's over the row's: the ratio once the server,
not the client, is the bottleneck), a thinner hatched bar with it. Any number of files, any
number of rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/plot.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server or in CI

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.common import RESULTS_DIR, machine_line

SECONDARY = "server_cpu_ratio"


def load_results(folder: Path) -> list[dict[str, Any]]:
    results = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if not {"name", "baseline", "rows"} <= data.keys():
            print(f"skipping {path}: not a benchmark result", file=sys.stderr)
            continue
        results.append(data)
    return results


def draw_panel(ax: Axes, result: dict[str, Any]) -> None:
    rows = result["rows"]
    labels = [row["label"] for row in rows]
    ratios = [float(row["ratio"]) for row in rows]
    positions = list(range(len(rows)))[::-1]  # first row on top
    ax.barh(positions, ratios, height=0.55, color="#3b75af", label="ratio (ops/s)")

    secondary = [row.get("extra", {}).get(SECONDARY) for row in rows]
    values = [float(v) if isinstance(v, int | float) else 0.0 for v in secondary]
    if any(isinstance(v, int | float) for v in secondary):
        ax.barh([p - 0.38 for p in positions], values, height=0.18, color="#f0a030",
                hatch="//", label="server-CPU ratio (server CPU per call)")

    target_label = "target"
    for pos, row, ratio in zip(positions, rows, ratios, strict=True):
        ax.text(ratio, pos, f" {ratio:.2f}x", va="center", fontsize=8)
        target = row.get("target")
        if target is not None:
            ax.plot([target, target], [pos - 0.35, pos + 0.35], color="#c0392b", linewidth=2,
                    label=target_label)
            target_label = "_nolegend_"

    ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--", label="baseline")
    highest = max([*ratios, *values, *(r.get("target") or 0 for r in rows), 1.0])
    lowest = min([*ratios, 1.0])
    if lowest > 0 and highest / lowest > 20:
        ax.set_xscale("log")
    ax.set_xlim(right=highest * (2.0 if ax.get_xscale() == "log" else 1.25))
    ax.set_yticks(positions, labels, fontsize=8)
    baseline = result["baseline"]
    ax.set_xlabel(f"ratio to baseline: {baseline['label']} = 1 "
                  f"({float(baseline['ops_per_s']):,.0f} ops/s)", fontsize=8)
    quick = " [quick run]" if result.get("quick") else ""
    machine = textwrap.fill(machine_line(result.get("machine", {})), 150)
    ax.set_title(f"{result.get('title', result['name'])}{quick}\n{machine}", fontsize=8,
                 loc="left")
    ax.legend(fontsize=7, loc="lower right")


def plot(results: list[dict[str, Any]], out: Path) -> Path:
    if not results:
        raise SystemExit("no benchmark results to plot")
    heights = [1.6 + 0.6 * len(r["rows"]) for r in results]
    fig, axes = plt.subplots(len(results), 1, figsize=(11, sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, result in zip(axes[:, 0], results, strict=True):
        draw_panel(ax, result)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: <results>/ratios.png")
    args = parser.parse_args(argv)
    out = plot(load_results(args.results), args.out or args.results / "ratios.png")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
