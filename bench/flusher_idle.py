"""The flusher's idle pass: what `tollgate flusher` costs while nothing is due, at 16,384
buckets (the maximum) against a few buckets, in the same run.

    python -m bench.flusher_idle [--quick] [--buckets 16384] [--seconds 10]

Each measurement is a fresh stack (a private redis-server, so its counters hold only the
flusher's calls) with TOLLGATE_BUCKETS set and TOLLGATE_FLUSHER_INTERVAL=0.05 (passes back to
back, 20 a second), where the flusher runs idle for `--seconds` after a settling second.
Reported: Redis commands/s, Redis CPU and the flusher's CPU (cores). The ratio is the
baseline's commands/s over the row's: 1 when an idle pass costs the same whatever the number
of buckets (the due index: one `due_take` per shard, not a visit per bucket).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.harness import Result, Row, parser, run, stack

INTERVAL = "0.05"
BASELINE_BUCKETS = 16


async def idle(buckets: int, seconds: float) -> dict[str, float]:
    with stack(TOLLGATE_BUCKETS=str(buckets), TOLLGATE_FLUSHER_INTERVAL=INTERVAL) as bench:
        flusher = bench.flusher()
        while "flusher: " not in flusher.output():
            if not flusher.alive():
                raise RuntimeError(flusher.output()[-2000:])
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        commands, redis_cpu = await asyncio.to_thread(bench.redis_stats)
        cpu = flusher.cpu()
        await asyncio.sleep(seconds)
        commands_after, redis_cpu_after = await asyncio.to_thread(bench.redis_stats)
        cpu_after = flusher.cpu()
    return {"commands_per_s": round((commands_after - commands) / seconds, 1),
            "redis_cores": round((redis_cpu_after - redis_cpu) / seconds, 4),
            "flusher_cores": round((cpu_after - cpu) / seconds, 4)}


async def main(args: Any) -> list[Result]:
    base = await idle(BASELINE_BUCKETS, args.seconds)
    row = await idle(args.buckets, args.seconds)
    ratio = base["commands_per_s"] / row["commands_per_s"] if row["commands_per_s"] else 0.0
    return [Result(
        "flusher_idle", f"Flusher idle pass: {args.buckets:,} buckets against "
        f"{BASELINE_BUCKETS}, passes every {INTERVAL} s", "Redis commands/s",
        Row(f"{BASELINE_BUCKETS} buckets", base["commands_per_s"], 1.0, None, base),
        [Row(f"{args.buckets:,} buckets", row["commands_per_s"], round(ratio, 3), 0.9, row)],
        {"seconds": args.seconds, "interval_s": float(INTERVAL)}, args.quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--buckets", type=int, default=16384)
    cli.add_argument("--seconds", type=float, default=10.0)
    args = cli.parse_args()
    if args.quick:
        args.seconds = 1.0
    run(main(args), args)
