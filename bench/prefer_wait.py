"""`Prefer: wait`: what held waits cost Redis, and how late a wait answers the job's end.

    python -m bench.prefer_wait [--quick] [--waits 200] [--seconds 10]

One `tollgate api` process on a private redis-server. `--waits` queued 8-item jobs (10 a
user: the pro plan's jobs and a user's wait limit), their batches taken off the queue so
that this process plays the worker. Baseline: the same Redis with nothing waiting, over
`--seconds`; row: a `GET /jobs/{id}` with `Prefer: wait=60` held on every job, over as long.
Then each job ends (its batch reported done, as a worker reports it) one after another; a
wait's latency runs from the report's answer to the wait's answer.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx

from bench.harness import (
    JOBS_PER_USER,
    Result,
    Row,
    Stack,
    parser,
    percentile,
    ready_job,
    report,
    report_body,
    run,
    stack,
    take_batches,
    users,
)

ITEMS = 8


async def redis_cores(bench: Stack, seconds: float) -> float:
    _, before = await asyncio.to_thread(bench.redis_stats)
    await asyncio.sleep(seconds)
    _, after = await asyncio.to_thread(bench.redis_stats)
    return (after - before) / seconds


async def main(args: Any) -> list[Result]:
    # Every wait comes from this one address: past TOLLGATE_CLIENT_MAX_IN_FLIGHT (128) an API
    # process refuses the rest (429 too_many_in_flight), as it would one client behind a proxy.
    with stack(TOLLGATE_CLIENT_MAX_IN_FLIGHT=str(args.waits + 64)) as bench:
        api = bench.api()
        tokens = await users(bench, api, [f"wait{i}" for i in range(
            -(-args.waits // JOBS_PER_USER))])
        owners = [tokens[i // JOBS_PER_USER] for i in range(args.waits)]
        token_of = {}
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            for owner in owners:
                token_of[await ready_job(http, owner, ITEMS)] = owner
        payloads = await asyncio.to_thread(take_batches, bench, args.waits)
        idle = await redis_cores(bench, args.seconds)

        answered: dict[str, float] = {}
        limits = httpx.Limits(max_connections=args.waits + 8)
        async with httpx.AsyncClient(base_url=api.url, timeout=120, limits=limits) as http:
            async def wait(job_id: str) -> None:
                response = await http.get(f"/jobs/{job_id}", headers={
                    "Authorization": f"Bearer {token_of[job_id]}", "Prefer": "wait=60"})
                answered[job_id] = time.perf_counter()
                assert response.headers.get("preference-applied") == "wait=60", response.text
                assert response.json()["status"] == "done", response.text

            waits = [asyncio.create_task(wait(p["job_id"])) for p in payloads]
            await asyncio.sleep(2.0)  # every wait is held
            held = await redis_cores(bench, args.seconds)
            ended: dict[str, float] = {}
            for payload in payloads:
                await report(http, payload, report_body(payload))
                ended[payload["job_id"]] = time.perf_counter()
                await asyncio.sleep(random.uniform(0.01, 0.05))
            await asyncio.wait_for(asyncio.gather(*waits), 120)
        latencies = [(answered[j] - ended[j]) * 1000 for j in ended]
    added = held - idle
    figures = {"idle_redis_cores": round(idle, 4), "held_redis_cores": round(held, 4),
               "added_redis_cores": round(added, 4),
               "answer_after_end_p50_ms": round(percentile(latencies, 0.5), 1),
               "answer_after_end_p95_ms": round(percentile(latencies, 0.95), 1),
               "answer_after_end_max_ms": round(max(latencies), 1)}
    print(figures)
    return [Result(
        "prefer_wait", f"Prefer: wait: Redis CPU (cores) with {args.waits} waits held on one "
        "API process, against none; answer latency after the job's end",
        "Redis cores (lower is better)",
        Row("nothing waiting", round(idle, 4), 1.0, None, {}),
        [Row(f"{args.waits} waits held", round(held, 4),
             round(held / idle, 2) if idle else 0.0, None, figures)],
        {"waits": args.waits, "seconds": args.seconds}, args.quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--waits", type=int, default=200)
    cli.add_argument("--seconds", type=float, default=10.0)
    args = cli.parse_args()
    if args.quick:
        args.waits, args.seconds = 20, 2.0
    run(main(args), args)
