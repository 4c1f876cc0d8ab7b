"""What every benchmark shares: the command line, the timing loop, the machine description,
the table and the JSON result file that `bench/plot.py` reads.

Result file (bench/results/<name>.json), the same for every benchmark:

    {"name", "title", "created_at", "quick", "machine": {...}, "params": {...},
     "baseline": {"label", "ops_per_s", "extra": {...}},
     "rows": [{"label", "ops_per_s", "ratio", "target", "extra": {...}}]}

`ratio` is the row's ops/s divided by the baseline's ops/s measured in the same run (or, when
a benchmark runs rounds, the median of the per-round ratios); `target` is the ratio the row
should reach, or null. `extra` holds whatever else the benchmark measured, numbers or text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"

T = TypeVar("T")


# --- command line --------------------------------------------------------------------------

def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a run of a few seconds that only proves the benchmark works")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help="folder for <name>.json (default: bench/results)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--prefix", default=None,
                        help="Redis key prefix (default: a fresh one); its keys are deleted after")
    return parser


def stop_on_sigterm() -> None:
    """SIGTERM (a timeout, a CI cancel) unwinds like Ctrl-C, so the `finally` blocks kill
    the servers, drop the database and delete the keys."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def stack_parser(description: str) -> argparse.ArgumentParser:
    """`base_parser` with --postgres-dsn, for a benchmark that starts a stack of its own (and
    unwinds on SIGTERM)."""
    stop_on_sigterm()
    parser = base_parser(description)
    parser.add_argument("--postgres-dsn", default=DEFAULT_POSTGRES_DSN)
    return parser


def fresh_prefix() -> str:
    return f"tgbench{uuid.uuid4().hex[:10]}"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs on uvloop when it is installed (uvicorn[standard] brings it), as the API would."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def event_loop_name() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"


# --- timing --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Timing:
    calls: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    cpu_seconds: float = 0.0  # this process's CPU time over the run

    @property
    def ops_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_call(self) -> float:
        """The client's own cost per call: unlike the wall-clock rate, barely moved by other
        programs sharing the CPUs."""
        return self.cpu_seconds * 1e6 / self.calls if self.calls else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(
    call: Callable[[int], Awaitable[object]],
    *,
    tasks: int,
    seconds: float | None = None,
    limit: int | None = None,
) -> Timing:
    """`tasks` coroutines each take the next index from one shared counter and await
    `call(index)`, until `seconds` have passed or `limit` indexes were handed out.

    A closed loop (a new call only when the previous one answered) measures throughput at a
    fixed concurrency, which is what N API workers or N connections do. The clock stops when
    the last call answers, so a run cut short by `limit` is still a fair rate.
    """
    if seconds is None and limit is None:
        raise ValueError("closed_loop needs seconds, limit or both")
    next_index = 0
    latencies: list[float] = []
    cpu_start = time.process_time()
    start = time.perf_counter()
    stop_at = start + seconds if seconds is not None else float("inf")

    async def one_task() -> None:
        nonlocal next_index
        while True:
            began = time.perf_counter()
            if began >= stop_at or (limit is not None and next_index >= limit):
                return
            index = next_index
            next_index += 1
            await call(index)
            latencies.append((time.perf_counter() - began) * 1000)

    async with asyncio.TaskGroup() as group:
        for _ in range(tasks):
            group.create_task(one_task())
    seconds = time.perf_counter() - start
    return Timing(len(latencies), seconds, latencies, time.process_time() - cpu_start)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


# --- machine -------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(**services: Any) -> dict[str, Any]:
    """The facts a reader needs to weigh the numbers; `services` adds server versions etc."""
    import redis

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "redis_py": redis.__version__,
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        **services,
    }


def machine_line(machine: dict[str, Any]) -> str:
    parts = [f"{machine.get('nproc')} CPUs ({machine.get('cpu_model')})",
             str(machine.get("python"))]
    for key, label in (("redis_server", "Redis"), ("postgres_server", "PostgreSQL"),
                       ("redis_py", "redis-py"), ("psycopg", "psycopg"),
                       ("event_loop", "loop")):
        if machine.get(key):
            parts.append(f"{label} {machine[key]}")
    load = machine.get("loadavg_at_start")
    if load:
        parts.append(f"load avg at start {load[0]}")
    return ", ".join(parts)


def process_cpu_seconds(pids: Sequence[int]) -> float | None:
    """User + system CPU time of local processes (e.g. PostgreSQL backends) from /proc;
    None when any of them cannot be read (another host, another OS)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return total / ticks


# --- results -------------------------------------------------------------------------------

@dataclass(slots=True)
class Row:
    label: str
    ops_per_s: float
    ratio: float
    target: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Baseline:
    label: str
    ops_per_s: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Result:
    name: str
    title: str
    machine: dict[str, Any]
    params: dict[str, Any]
    baseline: Baseline
    rows: list[Row]
    quick: bool = False
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "created_at": self.created_at,
            "quick": self.quick,
            "machine": self.machine,
            "params": self.params,
            "baseline": asdict(self.baseline),
            "rows": [asdict(row) for row in self.rows],
        }

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.json"
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if value < 10 else f"{value:.1f}"
    return str(value)


def format_table(result: Result, extra_columns: Sequence[tuple[str, str]] = ()) -> str:
    """A Markdown table (it pastes into the README as is): the baseline first, ratio 1."""
    header = ["", "ops/s", "ratio", "target", *(title for _, title in extra_columns)]
    lines = [
        f"## {result.title}",
        f"machine: {machine_line(result.machine)}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    entries: list[tuple[str, float, float, float | None, dict[str, Any]]] = [
        (f"{result.baseline.label} (baseline)", result.baseline.ops_per_s, 1.0, None,
         result.baseline.extra),
        *((row.label, row.ops_per_s, row.ratio, row.target, row.extra) for row in result.rows),
    ]
    for label, ops, ratio, target, extra in entries:
        ratio_text = f"{ratio:.2f}" + (" ✓" if target is not None and ratio >= target else "")
        if target is not None and ratio < target:
            ratio_text += " ✗"
        target_text = "-" if target is None else f"≥ {target:g}"
        cells = [label, f"{ops:,.0f}", ratio_text, target_text,
                 *(format_cell(extra.get(key)) for key, _ in extra_columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(result: Result, folder: Path, extra_columns: Sequence[tuple[str, str]] = ()) -> Path:
    print(format_table(result, extra_columns))
    path = result.write(folder)
    print(f"\nwrote {path}")
    return path


def run_and_report(main: Coroutine[Any, Any, Result | list[Result]], folder: Path,
                   extra_columns: Sequence[tuple[str, str]] = ()) -> None:
    """Runs `main` (as `run` does), then prints and writes each result it returns, and says
    how long it all took."""
    started = time.monotonic()
    results = run(main)
    for result in results if isinstance(results, list) else [results]:
        print()
        report(result, folder, extra_columns)
    print(f"\n{time.monotonic() - started:.0f} s in all")
