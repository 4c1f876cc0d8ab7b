"""Live progress (GET /jobs/{id}/events): how late an event is, and what open streams cost
Redis, with many streams open against one.

    python -m bench.sse [--quick] [--streams 200] [--changes 40]

One `tollgate api` process on a private redis-server. `--streams` queued 8-item jobs (10 a
user: the pro plan's jobs and a user's stream limit), their batches taken off the queue so
that this process plays the worker. Baseline: one stream open; row: a stream on every job.
Each change is one item reported done over the callback (as a worker reports it) on a job
picked at random; its latency runs from the report's POST to the event on that job's stream.
Also Redis commands/s with the streams open and idle.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    run,
    stack,
    take_batches,
    users,
)

ITEMS = 8


async def watch(http: httpx.AsyncClient, token: str, job_id: str, lines: asyncio.Queue[float],
                opened: asyncio.Event) -> None:
    async with http.stream("GET", f"/jobs/{job_id}/events",
                           headers={"Authorization": f"Bearer {token}"}) as stream:
        assert stream.status_code == 200, await stream.aread()
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                lines.put_nowait(time.perf_counter())
                opened.set()


async def phase(bench: Stack, url: str, jobs: list[tuple[str, dict[str, Any]]], open_count: int,
                changes: int, done: dict[str, int], seconds: float) -> dict[str, float]:
    watched = jobs[:open_count]
    queues = {p["job_id"]: asyncio.Queue[float]() for _, p in watched}
    limits = httpx.Limits(max_connections=open_count + 8)
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as http:
        openings = [asyncio.Event() for _ in watched]
        tasks = [asyncio.create_task(watch(http, token, p["job_id"], queues[p["job_id"]], e))
                 for (token, p), e in zip(watched, openings, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in openings)), 60)
        commands, redis_cpu = await asyncio.to_thread(bench.redis_stats)
        await asyncio.sleep(seconds)  # the streams open and idle
        idle_commands, idle_cpu = await asyncio.to_thread(bench.redis_stats)
        latencies = []
        for _ in range(changes):
            _, payload = random.choice([j for j in watched if done[j[1]["job_id"]] < ITEMS])
            job_id, index = payload["job_id"], done[payload["job_id"]]
            done[job_id] += 1
            waiting = queues[job_id]
            while not waiting.empty():
                waiting.get_nowait()
            item = payload["items"][index]
            sent = time.perf_counter()
            await report(http, payload, {"event": "items", "items": [{
                "index": item["index"], "ok": True, "output_key": item["output_key"],
                "idempotency_key": f"{job_id}:item:{item['index']}"}]})
            latencies.append((await asyncio.wait_for(waiting.get(), 30) - sent) * 1000)
            await asyncio.sleep(random.uniform(0, 0.05))
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task
    return {"p50_ms": round(percentile(latencies, 0.5), 1),
            "p95_ms": round(percentile(latencies, 0.95), 1),
            "idle_redis_commands_per_s": round((idle_commands - commands) / seconds, 1),
            "idle_redis_cores": round((idle_cpu - redis_cpu) / seconds, 4)}


async def main(args: Any) -> list[Result]:
    with stack() as bench:
        api = bench.api()
        tokens = await users(bench, api, [f"sse{i}" for i in range(
            -(-args.streams // JOBS_PER_USER))])
        owners = [tokens[i // JOBS_PER_USER] for i in range(args.streams)]
        token_of = {}
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            for owner in owners:
                token_of[await ready_job(http, owner, ITEMS)] = owner
        payloads = await asyncio.to_thread(take_batches, bench, args.streams)
        jobs = [(token_of[p["job_id"]], p) for p in payloads]
        done = {p["job_id"]: 0 for p in payloads}
        base = await phase(bench, api.url, jobs, 1, min(args.changes, ITEMS // 2), done,
                           args.seconds)
        many = await phase(bench, api.url, jobs, len(jobs), args.changes, done, args.seconds)
    ratio = base["p50_ms"] / many["p50_ms"] if many["p50_ms"] else 0.0
    return [Result(
        "sse", f"Live progress: event latency with {len(jobs)} streams open against one",
        "p50 ms (lower is better)", Row("1 stream open", base["p50_ms"], 1.0, None, base),
        [Row(f"{len(jobs)} streams open", many["p50_ms"], round(ratio, 3), None, many)],
        {"streams": len(jobs), "changes": args.changes, "seconds": args.seconds}, args.quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--streams", type=int, default=200)
    cli.add_argument("--changes", type=int, default=40)
    cli.add_argument("--seconds", type=float, default=3.0, help="idle, streams open")
    args = cli.parse_args()
    if args.quick:
        args.streams, args.changes, args.seconds = 10, 4, 0.5
    run(main(args), args)
