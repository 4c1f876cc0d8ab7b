"""Weights (issue 21): a pro user and a free user both keep a model's queue full for
`--seconds` (60); with the default plan weights (free=1, pro=4) their items/s ratio should be
4 ± 20 %, and neither should wait more than (weight ratio + 1) = 5 batches for its next one.

    python -m bench.weights [--quick] [--seconds 60] [--workers 1] [--batch-ms 200] [--cluster]

Both users' work is created, uploaded and executed over HTTP before the workers start, more
than the run can finish (the free plan runs one job at a time: one big job; the pro user
several), so both have work waiting the whole time. The workers run `bench.weights:logged`,
which sleeps `--batch-ms` per batch and appends the batch's start time and its user (from
the items' names) to a log. The counts and gaps are read from that log, over the window
from 2 s after the first batch to `--seconds` later: items/s per user, and for each user the
most batches of the other user that started between two of its own.
Baseline: the weight ratio (4). Rows: the measured items/s ratio (its ratio is measured / 4,
target 0.8..1.2), and the longest wait in batches (ratio: 5 over it, target ≥ 1).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Result, Row, parser, ready_job, run, stack, users

PROCESSOR = "bench.weights:logged"
BATCH = 8  # TOLLGATE_BATCH_SIZE's default
WEIGHTS = {"pro": 4, "free": 1}
WARM_S = 2.0


def logged(items: list[Any]) -> list[Any]:
    """The workers' processor: logs `<start time> <user> <items>`, sleeps TG_BENCH_BATCH_MS."""
    from workers.processors.noop import passthrough

    user = items[0].name.split("-", 1)[0] if items else "?"
    with open(os.environ["TG_BENCH_LOG"], "a") as log:
        log.write(f"{time.time():.6f} {user} {len(items)}\n")
    time.sleep(int(os.environ.get("TG_BENCH_BATCH_MS", "200")) / 1000)
    return passthrough(items)


def read_log(path: Path) -> list[tuple[float, str, int]]:
    starts = []
    for line in path.read_text().splitlines():
        at, user, count = line.split()
        starts.append((float(at), user, int(count)))
    return sorted(starts)


def longest_wait(starts: list[tuple[float, str, int]], user: str) -> int:
    """The most batches of others that started between two batches of `user`."""
    longest, since, seen = 0, 0, False
    for _, who, _ in starts:
        if who == user:
            if seen:
                longest = max(longest, since)
            seen, since = True, 0
        else:
            since += 1
    return longest


async def measure(args: Any) -> dict[str, Any]:
    rate = args.workers * 1000 / args.batch_ms * BATCH  # items/s the workers could do
    free_items = math.ceil(rate * (args.seconds + WARM_S + 10) / 5 * 1.2)
    pro_jobs = 4
    pro_items = math.ceil(rate * (args.seconds + WARM_S + 10) * 4 / 5 * 1.2 / pro_jobs)
    with stack(None, TG_BENCH_BATCH_MS=str(args.batch_ms),
               TOLLGATE_MAX_ITEMS=str(max(1000, free_items, pro_items))) as bench:
        log = bench.folder / "starts.log"
        log.touch()
        api = bench.api()
        pro, free = await users(bench, api, ["pro", "free"], ["pro", "free"])
        bench.flusher()
        async with httpx.AsyncClient(base_url=api.url, timeout=120) as http:
            await ready_job(http, free, free_items, prefix="free")
            for _ in range(pro_jobs):
                await ready_job(http, pro, pro_items, prefix="pro")
        for _ in range(args.workers):
            bench.worker(api, PROCESSOR, TG_BENCH_LOG=str(log))
        deadline = time.monotonic() + 60
        while not log.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("no batch started: no worker?")
            await asyncio.sleep(0.05)
        first = read_log(log)[0][0]
        await asyncio.sleep(max(0.0, first + WARM_S + args.seconds - time.time()))
        starts = [s for s in read_log(log) if first + WARM_S <= s[0] < first + WARM_S
                  + args.seconds]
    items = {user: sum(n for _, who, n in starts if who == user) for user in WEIGHTS}
    return {"starts": starts, "items": items,
            "totals": {"free": free_items, "pro": pro_items * pro_jobs}}


async def main(args: Any) -> list[Result]:
    got = await measure(args)
    items, starts = got["items"], got["starts"]
    if not items["free"] or not items["pro"]:
        raise RuntimeError(f"a user got no batch in the window: {items}")
    target_ratio = WEIGHTS["pro"] / WEIGHTS["free"]
    measured = items["pro"] / items["free"]
    waits = {user: longest_wait(starts, user) for user in WEIGHTS}
    bound = target_ratio + 1
    worst = max(waits.values())
    return [Result(
        "weights", f"Weights: a pro and a free user both keep the queue full for "
        f"{args.seconds} s ({args.workers} worker{'s' * (args.workers > 1)}, "
        f"{args.batch_ms} ms batches{', Redis Cluster' if args.cluster else ''}); their "
        "items/s ratio (target 4 ± 20 %) and the longest wait for a user's next batch "
        "(target ≤ weight ratio + 1 batches)", "ratio",
        Row("weight ratio pro:free (TOLLGATE_PLAN_WEIGHTS default)", target_ratio, 1.0, None,
            {"weights": WEIGHTS}),
        [Row("items/s ratio pro:free", round(measured, 3), round(measured / target_ratio, 3),
             0.8, {"upper_target": 1.2, "pro_items_per_s": round(items["pro"] / args.seconds, 2),
                   "free_items_per_s": round(items["free"] / args.seconds, 2),
                   "batches": len(starts)}),
         Row("longest wait for the next batch, in the other user's batches", worst,
             round(bound / worst, 3) if worst else 99.0, 1.0,
             {"pro": waits["pro"], "free": waits["free"], "bound": bound})],
        {"seconds": args.seconds, "workers": args.workers, "batch_ms": args.batch_ms,
         "cluster": args.cluster, "loadavg_before": args.load,
         "loadavg_after": [round(v, 2) for v in os.getloadavg()],
         "items_made": got["totals"]}, args.quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--seconds", type=float, default=0, help="the window (default 60; 8 quick)")
    cli.add_argument("--workers", type=int, default=1, help="worker processes")
    cli.add_argument("--batch-ms", type=int, default=200, help="the processor's batch time")
    args = cli.parse_args()
    args.seconds = args.seconds or (8 if args.quick else 60)
    args.load = [round(v, 2) for v in os.getloadavg()]
    run(main(args), args)
