"""The docs' benchmark tables, from bench/results/latest.json: one Markdown table a scenario.

    python -m bench.table                       # prints them
    python -m bench.table --write PATH          # writes them (e.g. docs/benchmarks-tables.md)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.harness import RESULTS, markdown

ORDER = ["end_to_end", "end_to_end_before_scheduling", "flusher", "fairness", "weights",
         "dispatch_cost",
         "http_api", "sse", "webhook_latency", "rate_limit", "flusher_idle", "worker_modes"]


def tables(path: Path) -> str:
    found = json.loads(path.read_text())
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    notes = {n: found[n].get("note") for n in names}
    return "\n".join(markdown(found[n]) + (f"\n{notes[n]}\n" if notes[n] else "")
                     for n in names)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--results", type=Path, default=RESULTS / "latest.json")
    cli.add_argument("--write", type=Path, default=None)
    args = cli.parse_args()
    text = "<!-- made by `python -m bench.table` from bench/results/latest.json -->\n\n" + tables(
        args.results)
    if args.write:
        args.write.write_text(text)
        print(f"wrote {args.write}")
    else:
        print(text)


if __name__ == "__main__":
    main()
