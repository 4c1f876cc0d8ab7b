"""Live progress (GET /jobs/{id}/events): what open streams cost Redis, and how late events are.

Runs a real API process (`tollgate api`, uvicorn, one process) on a redis-server of its own
(so the counters hold only this run) and a fresh PostgreSQL database, opens 0, 1 and N
streams on N running jobs, and prints per phase:

- Redis commands/s and Redis CPU (INFO stats/cpu deltas), and the API process's CPU;
- latency from a change (an item counted by the item_result script) to its event on the
  stream that watches the job, over `--changes` changes at random moments.

    python bench/sse.py [--streams 1000] [--quick]
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.common import (
    DEFAULT_POSTGRES_DSN,
    Baseline,
    Result,
    Row,
    base_parser,
    machine_info,
    report,
    run,
)
from bench.stack import Database, HttpServer, Stack, private_redis, process_cpu

BUCKETS = 64
ITEMS = 1000


@dataclass
class Streams:
    """Readers of open streams: the last (done_items, arrival) seen per job."""

    seen: dict[str, tuple[int, float]] = field(default_factory=dict)
    opened: dict[str, asyncio.Event] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def read(self, client: httpx.AsyncClient, job_id: str, token: str) -> None:
        import json

        async with client.stream("GET", f"/jobs/{job_id}/events",
                                 headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status_code == 200, response.status_code
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    view = json.loads(line[6:])
                    self.seen[job_id] = (view["done_items"], time.monotonic())
                    self.opened[job_id].set()

    def open(self, client: httpx.AsyncClient, job_id: str, token: str) -> None:
        self.opened[job_id] = asyncio.Event()
        self.tasks.append(asyncio.create_task(self.read(client, job_id, token)))

    async def wait_open(self) -> None:
        await asyncio.gather(*(e.wait() for e in self.opened.values()))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        self.opened.clear()


async def counters(client: Any) -> tuple[int, float]:
    stats = await client.info("stats")
    cpu = await client.info("cpu")
    return int(stats["total_commands_processed"]), float(cpu["used_cpu_user"]) + float(
        cpu["used_cpu_sys"])


def api_cpu(server: HttpServer) -> float:
    return sum(process_cpu(pid) for pid in server.pids())


async def measure(client: Any, server: HttpServer | None, seconds: float) -> dict[str, float]:
    commands0, redis0 = await counters(client)
    api0, t0 = (api_cpu(server) if server else 0.0), time.monotonic()
    await asyncio.sleep(seconds)
    commands1, redis1 = await counters(client)
    elapsed = time.monotonic() - t0
    return {
        # Minus the two INFO calls of each reading.
        "redis_commands_per_s": round((commands1 - commands0 - 2) / elapsed, 1),
        "redis_cpu_pct": round((redis1 - redis0) / elapsed * 100, 2),
        "api_cpu_pct": round(((api_cpu(server) if server else 0.0) - api0) / elapsed * 100, 1),
    }


async def latencies(core: Any, streams: Streams, jobs: list[tuple[str, str]], changes: int,
                    next_item: dict[str, int]) -> dict[str, float]:
    samples = []
    for _ in range(changes):
        await asyncio.sleep(random.uniform(0, 0.3))  # a random moment of the poll cycle
        job_id, owner = random.choice(jobs)
        index = next_item[job_id]
        next_item[job_id] += 1
        started = time.monotonic()
        await core.item_result(job_id, owner, callback_key=f"bench-{index}", index=index,
                               ok=True, detail="", lease_ms=600_000, flush_delay_ms=60_000)
        while streams.seen[job_id][0] < index + 1:
            await asyncio.sleep(0.001)
            if time.monotonic() - started > 10:
                raise RuntimeError(f"no event for {job_id} after 10 s")
        samples.append((streams.seen[job_id][1] - started) * 1000)
    samples.sort()
    return {"latency_p50_ms": round(statistics.median(samples), 1),
            "latency_p95_ms": round(samples[int(len(samples) * 0.95) - 1], 1),
            "latency_max_ms": round(samples[-1], 1)}


# The alternative DESIGN.md names: the script publishes each change on a sharded channel of
# the job (slot-aware, allowed in scripts on Redis 7) and streams subscribe.
BUMP = "return redis.call('HINCRBY', KEYS[1], 'seq', 1)"
BUMP_AND_PUBLISH = ("local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1) "
                    "redis.call('SPUBLISH', KEYS[2], seq) return seq")


async def script_usec(client: Any, source: str, keys: list[str], calls: int) -> float:
    """Server time of one call of `source`, from INFO commandstats."""
    sha = await client.script_load(source)
    await client.config_resetstat()
    for _ in range(calls):
        await client.evalsha(sha, len(keys), *keys)
    stats = (await client.info("commandstats")).get("cmdstat_evalsha") or {}
    return round(int(stats.get("usec", 0)) / max(int(stats.get("calls", 1)), 1), 2)


async def spublish_phase(redis_url: str, core: Any, jobs: list[tuple[str, str]],
                         seconds: float, changes: int) -> dict[str, float]:
    """SSUBSCRIBE to every job's channel on one connection; cost idle and per change, and
    latency from a script's SPUBLISH to the message."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url, decode_responses=True)
    channels = {job_id: core.job_keys(job_id).base + ":changes" for job_id, _ in jobs}
    pubsub = client.pubsub()
    arrived: dict[str, float] = {}
    came: dict[str, asyncio.Event] = {}
    try:
        for start in range(0, len(jobs), 200):
            await pubsub.ssubscribe(*list(channels.values())[start:start + 200])

        async def listen() -> None:
            while True:
                message = await pubsub.get_sharded_message(timeout=1.0) \
                    if hasattr(pubsub, "get_sharded_message") else \
                    await pubsub.get_message(timeout=1.0)
                if message and message["type"] == "smessage":
                    arrived[message["channel"]] = time.monotonic()
                    if message["channel"] in came:
                        came[message["channel"]].set()

        listener = asyncio.create_task(listen())
        phase = await measure(client, None, seconds)
        publish = await client.script_load(BUMP_AND_PUBLISH)
        samples = []
        for _ in range(changes):
            await asyncio.sleep(random.uniform(0, 0.3))
            job_id, _ = random.choice(jobs)
            channel = channels[job_id]
            came[channel] = asyncio.Event()
            started = time.monotonic()
            await client.evalsha(publish, 2, core.job_keys(job_id).base, channel)
            await asyncio.wait_for(came[channel].wait(), 10)
            samples.append((arrived[channel] - started) * 1000)
        listener.cancel()
        samples.sort()
        job_key = core.job_keys(jobs[0][0]).base
        phase.update({
            "latency_p50_ms": round(statistics.median(samples), 2),
            "latency_p95_ms": round(samples[int(len(samples) * 0.95) - 1], 2),
            "latency_max_ms": round(samples[-1], 2),
            "script_us_bump": await script_usec(client, BUMP, [job_key], 2000),
            "script_us_bump_publish": await script_usec(
                client, BUMP_AND_PUBLISH, [job_key, channels[jobs[0][0]]], 2000),
        })
        return phase
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def setup_jobs(core: Any, count: int) -> list[tuple[str, str]]:
    from service.state.plans import PLANS

    async def one(i: int) -> tuple[str, str]:
        owner = f"sse-{i}"
        await core.ensure_user(owner, PLANS["pro"], ITEMS)
        job_id = core.keys.new_job_id(owner)
        await core.reserve(job_id=job_id, user_id=owner, total=ITEMS, price=1,
                           hold_ttl_ms=3_600_000, meta_json="[]")
        for step in (("created", "uploaded"), ("uploaded", "queued"), ("queued", "running")):
            await core.transition(job_id, *step, lease_ms=600_000)
        return job_id, owner

    jobs: list[tuple[str, str]] = []
    for start in range(0, count, 100):
        jobs += await asyncio.gather(*(one(i) for i in range(start, min(count, start + 100))))
    return jobs


async def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--postgres-dsn", default=DEFAULT_POSTGRES_DSN)
    args = parser.parse_args()
    if args.quick:
        args.streams, args.seconds, args.changes = 20, 1.0, 5
    from redis.asyncio import Redis

    from service.api.auth import issue_token
    from service.state.keys import KeySpace
    from service.state.store import Core

    with private_redis() as redis_url:
        database = Database(args.postgres_dsn)
        database.create()
        stack = Stack(redis_url, database, "tgsse", extra={"TOLLGATE_BUCKETS": str(BUCKETS)})
        server = HttpServer("tollgate", "tollgate", "uvicorn", 1, stack)
        client = Redis.from_url(redis_url, decode_responses=True)
        try:
            stack.migrate()
            server.start()
            server.wait_ready()
            core = Core(client, KeySpace("tgsse", BUCKETS))
            jobs = await setup_jobs(core, args.streams)
            next_item = {job_id: 0 for job_id, _ in jobs}
            tokens = {owner: issue_token(stack.secret, owner, ttl_s=3600) for _, owner in jobs}
            limits = httpx.Limits(max_connections=args.streams + 16,
                                  max_keepalive_connections=args.streams + 16)
            phases: dict[str, dict[str, float]] = {}
            async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
                phases["0 streams"] = await measure(client, server, args.seconds)
                for count in (1, args.streams):
                    streams = Streams()
                    for job_id, owner in jobs[:count]:
                        streams.open(http, job_id, tokens[owner])
                    await asyncio.wait_for(streams.wait_open(), 120)
                    await asyncio.sleep(1)  # the watch's first poll
                    label = f"{count} stream" + ("s" if count > 1 else "")
                    phases[label] = await measure(client, server, args.seconds)
                    phases[label].update(await latencies(
                        core, streams, jobs[:count], args.changes, next_item))
                    await streams.close()
            label = f"SPUBLISH: {args.streams} subscribed"
            phases[label] = await spublish_phase(redis_url, core, jobs, args.seconds,
                                                 args.changes)
            idle = phases["0 streams"]["redis_commands_per_s"]
            for values in phases.values():
                values["per_stream_commands_per_s"] = 0.0
            for label, values in phases.items():
                count = int(label.split()[0]) if label[0].isdigit() else args.streams
                if count:
                    values["per_stream_commands_per_s"] = round(
                        (values["redis_commands_per_s"] - idle) / count, 2)
        finally:
            await client.aclose()
            server.stop()
            database.drop()
            stack.remove_storage()

    columns = [("redis_cpu_pct", "Redis CPU %"), ("per_stream_commands_per_s", "cmd/s per stream"),
               ("api_cpu_pct", "API CPU %"), ("latency_p50_ms", "p50 ms"),
               ("latency_p95_ms", "p95 ms"), ("latency_max_ms", "max ms"),
               ("script_us_bump", "script µs: bump"),
               ("script_us_bump_publish", "bump + SPUBLISH")]
    baseline = Baseline("0 streams (Redis commands/s)", idle, phases["0 streams"])
    rows = [Row(label, values["redis_commands_per_s"],
                round(values["redis_commands_per_s"] / max(idle, 0.1), 2), None, values)
            for label, values in phases.items() if label != "0 streams"]
    result = Result("sse", "Live progress: Redis cost of open streams, change-to-event latency",
                    machine_info(), {"streams": args.streams, "seconds": args.seconds,
                                     "changes": args.changes, "buckets": BUCKETS},
                    baseline, rows, quick=args.quick)
    report(result, args.out, columns)


if __name__ == "__main__":
    run(main())
