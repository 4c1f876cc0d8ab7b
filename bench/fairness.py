"""Fairness (issue 21): user A keeps a backlog of about 1,000 items queued on a model served by
2 `tollgate worker` processes; user B executes an 8-item job (one batch). B's wait, from its
execute call to its job's `started_at` (the first batch starting on a worker), in batch times.

    python -m bench.fairness [--quick] [--trials 20] [--backlog 1000] [--batch-ms 200]

The workers run `bench.fairness:sleepy`, which sleeps `--batch-ms` per batch (a batch time you
know), and the flusher runs the dispatcher (at most TOLLGATE_DISPATCH_BATCHES_PER_WORKER
batches per live worker in RQ). Everything goes through the `tollgate` commands and HTTP.
The batch time is the one the workers made: the two workers' batches (A's and B's) over the
trials' time (a batch costs more than its sleep: downloads, uploads, callbacks). A row per
`--per-worker` value (default 2, the setting's default, and 1). Trials run one after
another; before each, A's finished jobs are replaced, so A keeps its backlog (10 jobs of
backlog/10 items: the pro plan's concurrency). Both users are pro (equal weights).
Baseline: one batch time. A row: the p95 of B's waits; its ratio is 1.5 batch times over
that p95 (target ≥ 1: p95 ≤ 1.5 batch times). With RQ alone (first in, first out), B would
wait behind A's whole backlog: backlog / 8 / 2 batch times.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime
from typing import Any

import httpx

from bench.harness import (
    JOBS_PER_USER,
    Result,
    Row,
    median,
    parser,
    percentile,
    ready_job,
    run,
    stack,
    users,
)

PROCESSOR = "bench.fairness:sleepy"
WORKERS = 2
BATCH = 8  # TOLLGATE_BATCH_SIZE's default: B's 8 items are one batch
TARGET_BATCHES = 1.5
FINAL = ("done", "failed", "canceled", "expired")


def sleepy(items: list[Any]) -> list[Any]:
    """The workers' processor: one batch takes TG_BENCH_BATCH_MS, then passes its items."""
    from workers.processors.noop import passthrough

    time.sleep(int(os.environ.get("TG_BENCH_BATCH_MS", "200")) / 1000)
    return passthrough(items)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def view(http: httpx.AsyncClient, token: str, job_id: str) -> dict[str, Any]:
    answer = await http.get(f"/jobs/{job_id}", headers=auth(token))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def top_up(http: httpx.AsyncClient, token: str, jobs: list[str], size: int,
                 done: dict[str, int]) -> None:
    """A's finished jobs replaced by new ones, so A keeps JOBS_PER_USER jobs of `size`;
    `done` keeps each A job's done items as last read."""
    views = await asyncio.gather(*(view(http, token, job_id) for job_id in jobs))
    done.update((v["id"], v["done_items"]) for v in views)
    live = [v["id"] for v in views if v["status"] not in FINAL]
    fresh = await asyncio.gather(*(ready_job(http, token, size)
                                   for _ in range(JOBS_PER_USER - len(live))))
    jobs[:] = [*live, *fresh]


async def trials(args: Any, per_worker: int, size: int) -> tuple[list[float], float]:
    """B's waits in seconds over `args.trials` trials, with the dispatcher keeping
    `per_worker` batches per worker in RQ; and the batch time the workers made (two workers'
    batches, A's and B's, over the trials' time)."""
    waits: list[float] = []
    done: dict[str, int] = {}
    with stack(None, TG_BENCH_BATCH_MS=str(args.batch_ms),
               TOLLGATE_DISPATCH_BATCHES_PER_WORKER=str(per_worker)) as bench:
        api = bench.api()
        user_a, user_b = await users(bench, api, ["fair-a", "fair-b"])
        bench.flusher()
        for _ in range(WORKERS):
            bench.worker(api, PROCESSOR)
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            a_jobs: list[str] = []
            await top_up(http, user_a, a_jobs, size, done)
            deadline = time.monotonic() + 60
            while not any([(await view(http, user_a, j))["started_at"] for j in a_jobs]):
                if time.monotonic() > deadline:
                    raise RuntimeError("A's backlog never started: no worker?")
                await asyncio.sleep(0.05)
            began, done_before = time.monotonic(), sum(done.values())
            for _ in range(args.trials):
                await top_up(http, user_a, a_jobs, size, done)
                b_job = await ready_job(http, user_b, BATCH, execute=False)
                sent = time.time()
                executed = await http.post(f"/jobs/{b_job}/execute", headers=auth(user_b))
                assert executed.status_code == 202, executed.text
                deadline = time.monotonic() + 120
                while (b := await view(http, user_b, b_job))["status"] not in FINAL:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"B's job never ended: {b}")
                    await asyncio.sleep(0.02)
                assert b["status"] == "done" and b["started_at"], b
                started = datetime.fromisoformat(b["started_at"].replace("Z", "+00:00"))
                waits.append(started.timestamp() - sent)
            await top_up(http, user_a, a_jobs, size, done)
            batches = (sum(done.values()) - done_before) / BATCH + args.trials
            return waits, (time.monotonic() - began) * WORKERS / batches


async def main(args: Any) -> list[Result]:
    size = max(BATCH, args.backlog // JOBS_PER_USER)
    rows, every = [], {}
    for per_worker in args.per_worker:
        seconds, batch_s = await trials(args, per_worker, size)
        waits = [wait / batch_s for wait in seconds]
        p95 = percentile(waits, 0.95)
        rows.append(Row(
            f"B's wait, p95 of {len(waits)} trials, {per_worker} batch"
            f"{'es' * (per_worker > 1)} per worker in RQ", round(p95, 2),
            round(TARGET_BATCHES / p95, 3) if p95 > 0 else None, 1.0,
            {"p50": round(median(waits), 2), "max": round(max(waits), 2),
             "batch_ms_made": round(batch_s * 1000),
             "p95_in_nominal_batches": round(percentile(seconds, 0.95) * 1000
                                             / args.batch_ms, 2),
             "fifo_wait_batches": round(size * JOBS_PER_USER / BATCH / WORKERS, 1)}))
        every[per_worker] = [round(w, 2) for w in waits]
    return [Result(
        "fairness", f"Fairness: user B's 8-item job behind user A's {size * JOBS_PER_USER}-item "
        f"backlog, {WORKERS} workers, {args.batch_ms} ms batches; B's wait from execute to its "
        "first batch starting, in batch times (ratio: 1.5 batch times over the p95)",
        "batch times",
        Row("one batch time (as the workers made it)", 1.0, 1.0, None,
            {"batch_ms_slept": args.batch_ms}),
        rows, {"trials": args.trials, "backlog_items": size * JOBS_PER_USER,
               "workers": WORKERS, "batch_ms": args.batch_ms,
               "batches_per_worker": args.per_worker,
               "loadavg_before": args.load, "waits_in_batches": every}, args.quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--trials", type=int, default=0, help="B's jobs (default 20; 3 quick)")
    cli.add_argument("--backlog", type=int, default=0, help="A's items (default 1000; 200)")
    cli.add_argument("--batch-ms", type=int, default=200, help="the processor's batch time")
    cli.add_argument("--per-worker", default=None, help="TOLLGATE_DISPATCH_BATCHES_PER_WORKER "
                     "values, a row each (default 2,1; 2 quick)")
    args = cli.parse_args()
    args.per_worker = [int(n) for n in (args.per_worker or ("2" if args.quick else "2,1"))
                       .split(",")]
    args.load = [round(v, 2) for v in os.getloadavg()]
    args.trials = args.trials or (3 if args.quick else 20)
    args.backlog = args.backlog or (200 if args.quick else 1000)
    run(main(args), args)
