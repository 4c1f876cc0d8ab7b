"""Flusher at scale (issue 11, part 4): an idle pass over many buckets, and one heavy user's
backlog against the same jobs spread over many users.

On a redis-server of its own (its command counts are this run's alone) and SQL (a SQLite
file unless --database-url). Two measurements, each against a baseline from the same run:

- **Idle pass**: passes/s over `--buckets` buckets where nothing is due. Baseline: the pass
  before the due index (every bucket visited: `flush_bucket` per bucket, 4 at a time, as
  flush_once did). Row: `flush_once` now (the due index names no bucket). Extra: Redis
  commands a pass, and the safety net's cost (`reindex_buckets`, every bucket in use; it
  runs once a minute).
- **Drain**: jobs/s moving `--jobs` finished jobs (8 items) into SQL, passes back to back
  until none is left. Baseline: the jobs spread over `--users` users in as many buckets,
  drained by flush_once now. Rows: all the jobs of one user (one bucket) now; the same one
  user and the spread jobs under the rule before (one round of flush_batch per bucket and
  pass, every bucket walked).

The safety net: all buckets in use at once (what a pass would pay without the rolling net)
and one pass's share of the rolling net (a sixtieth of them at 1 s passes).

    python bench/sweeper_scale.py                 # 16,384 buckets, 5,000 jobs
    python bench/sweeper_scale.py --quick
"""

from __future__ import annotations

import asyncio
import math
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.common import Baseline, Result, Row, base_parser, machine_info, report
from bench.stack import private_redis
from service.bucket_sweep import FlushStats, Sessions, flush_bucket
from service.history.engine import make_engine, make_session_factory, run_migrations
from service.runtime import make_core
from service.settings import Settings
from service.state.plans import Plan
from service.state.replies import ItemReport
from service.state.store import Core
from service.sweeper import FULL_SWEEP_S, flush_once, reindex_buckets

ITEMS = 8
PLAN = Plan(name="bench", rule_slots=1, concurrency=100_000)
Pass = Callable[[Core, Sessions, Settings], Awaitable[FlushStats]]


async def pass_before(core: Core, sessions: Sessions, settings: Settings) -> FlushStats:
    """flush_once before the due index: every bucket, one round each, 4 at a time."""
    stats = FlushStats()
    gate = asyncio.Semaphore(4)

    async def one(bucket: int) -> None:
        async with gate:
            stats.add(await flush_bucket(core, sessions, settings, bucket))

    await asyncio.gather(*(one(bucket) for bucket in range(settings.buckets)))
    return stats


async def pass_now(core: Core, sessions: Sessions, settings: Settings) -> FlushStats:
    return await flush_once(core, sessions, settings)


async def commands(client: Redis) -> int:
    return int((await client.info("stats"))["total_commands_processed"])


async def idle_passes(core: Core, sessions: Sessions, settings: Settings, run: Pass,
                      seconds: float) -> tuple[float, float]:
    """(passes/s, Redis commands a pass) over `seconds` (at least one pass)."""
    count, before, start = 0, await commands(core.client), time.perf_counter()
    while count == 0 or time.perf_counter() - start < seconds:
        assert not await run(core, sessions, settings)  # nothing was due
        count += 1
    elapsed = time.perf_counter() - start
    return count / elapsed, (await commands(core.client) - before - 1) / count


def spread_users(core: Core, count: int) -> list[str]:
    """`count` users, each in a bucket of its own."""
    users: dict[int, str] = {}
    n = 0
    while len(users) < count:
        name = f"spread-{n}"
        users.setdefault(core.keys.bucket_of_user(name), name)
        n += 1
    return list(users.values())


async def finished_jobs(core: Core, users: list[str], jobs: int) -> None:
    """`jobs` done jobs of ITEMS items each, round robin over `users`, 64 at a time."""
    for user in users:
        await core.ensure_user(user, PLAN, 10**12)
    gate = asyncio.Semaphore(64)

    async def one(n: int) -> None:
        user = users[n % len(users)]
        async with gate:
            job_id = core.keys.new_job_id(user)
            await core.reserve(job_id=job_id, user_id=user, total=ITEMS, price=1,
                               hold_ttl_ms=3_600_000, meta_json="[]")
            for source, target in (("created", "uploaded"), ("uploaded", "queued"),
                                   ("queued", "running")):
                await core.transition(job_id, source, target, lease_ms=60_000)
            await core.items_result(
                job_id, user, [ItemReport(f"cb-{i}", i, True, f"out/{i}") for i in range(ITEMS)],
                lease_ms=60_000, flush_delay_ms=0)

    await asyncio.gather(*(one(n) for n in range(jobs)))


async def drain(core: Core, sessions: Sessions, settings: Settings, run: Pass,
                jobs: int) -> tuple[float, int]:
    """(jobs/s, passes) until every job is in SQL."""
    flushed, passes, start = 0, 0, time.perf_counter()
    while flushed < jobs:
        flushed += (await run(core, sessions, settings)).flushed_jobs
        passes += 1
        assert passes < 10_000, "the drain makes no progress"
    return jobs / (time.perf_counter() - start), passes


async def measure(redis_url: str, database_url: str, args: Any) -> Result:
    client = Redis.from_url(redis_url, decode_responses=True)
    run_migrations(database_url)
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    seconds = 1.0 if args.quick else 5.0
    try:
        idle = Settings(redis_url=redis_url, key_prefix="idle", buckets=args.buckets,
                        flush_delay=0)
        core = make_core(client, idle)
        await core.ensure_user("someone", PLAN, 1)  # one user, flushed: every bucket idle
        await flush_once(core, sessions, idle, reindex="all")
        before_ps, before_cmds = await idle_passes(core, sessions, idle, pass_before, seconds)
        now_ps, now_cmds = await idle_passes(core, sessions, idle, pass_now, seconds)
        # The safety net over every bucket (its first pass); later ones read buckets in use.
        await client.sadd(core.keys.buckets_in_use, *range(args.buckets))
        start, cmds = time.perf_counter(), await commands(client)
        await reindex_buckets(core, idle, "in_use")
        sweep_s, sweep_cmds = time.perf_counter() - start, await commands(client) - cmds - 1
        # What the flusher loop pays a pass: one share of the rolling net (1 s passes).
        share = math.ceil(args.buckets * idle.flusher_interval / FULL_SWEEP_S)
        start = time.perf_counter()
        await reindex_buckets(core, idle, list(range(share)))
        share_s = time.perf_counter() - start

        warm = Settings(redis_url=redis_url, key_prefix="warm-up", buckets=args.drain_buckets,
                        flush_delay=0)  # SQL and the scripts warmed before the first drain
        core = make_core(client, warm)
        await finished_jobs(core, spread_users(core, 4), 200)
        await drain(core, sessions, warm, pass_now, 200)
        rates: dict[str, list[tuple[float, int]]] = {}
        # Spread and heavy alternate over the rounds (this machine's load moves a lot); each
        # round's ratio is heavy/spread of that round, the row shows their median.
        order = [("spread", args.users, pass_now), ("heavy", 1, pass_now)]
        plan = [step for r in range(args.rounds) for step in (order if r % 2 == 0 else order[::-1])]
        plan += [("spread-before", args.users, pass_before), ("heavy-before", 1, pass_before)]
        for n, (label, users, run) in enumerate(plan):
            settings = Settings(redis_url=redis_url, key_prefix=f"drain-{n}-{label}",
                                buckets=args.drain_buckets, flush_delay=0)
            core = make_core(client, settings)
            names = spread_users(core, users) if users > 1 else ["heavy-user"]
            await finished_jobs(core, names, args.jobs)
            rate = await drain(core, sessions, settings, run, args.jobs)
            rates.setdefault(label, []).append(rate)
            print(f"  drain {label}: {rate[0]:,.0f} jobs/s in {rate[1]} passes", flush=True)
    finally:
        await engine.dispose()
        await client.aclose()

    idle_extra = {"buckets": args.buckets, "redis_commands_per_pass": round(before_cmds)}
    rows = [Row("idle pass, due index (now)", now_ps, now_ps / before_ps,
                extra={"buckets": args.buckets, "redis_commands_per_pass": round(now_cmds),
                       "safety_net_s": round(sweep_s, 3),
                       "safety_net_share": share, "safety_net_share_s": round(share_s, 4),
                       "safety_net_redis_commands": sweep_cmds})]
    spread = statistics.median(rate for rate, _ in rates["spread"])
    per_round = [heavy / spread_rate for (heavy, _), (spread_rate, _)
                 in zip(rates["heavy"], rates["spread"], strict=True)]

    def row(label: str, key: str, ratio: float | None = None, target: float | None = None,
            **extra: Any) -> Row:
        rate = statistics.median(r for r, _ in rates[key])
        return Row(label, rate, rate / spread if ratio is None else ratio, target, extra={
            "passes": max(p for _, p in rates[key]), **extra})

    drain_rows = [
        row("drain: one user's jobs, one bucket (now)", "heavy", statistics.median(per_round),
            target=0.9, round_ratios=" ".join(f"{r:.2f}" for r in per_round)),
        row("drain: one user's jobs, one bucket (before)", "heavy-before"),
        row(f"drain: spread over {args.users} buckets (before)", "spread-before"),
    ]
    machine = machine_info(database=database_url.split(":")[0])
    params = {"buckets": args.buckets, "jobs": args.jobs, "items": ITEMS, "users": args.users,
              "drain_buckets": args.drain_buckets, "flush_batch": Settings().flush_batch}
    report(Result("sweeper_idle", f"Flusher: idle passes/s over {args.buckets:,} buckets, ratio "
                  "to the pass before the due index", machine, params,
                  Baseline("idle pass, every bucket visited (before)", before_ps, idle_extra),
                  rows, quick=args.quick), args.out,
           [("redis_commands_per_pass", "Redis commands a pass"),
            ("safety_net_s", "safety net over every bucket, s"),
            ("safety_net_redis_commands", "its Redis commands"),
            ("safety_net_share", "buckets re-read a pass"),
            ("safety_net_share_s", "their time, s")])
    return Result("sweeper_drain", f"Flusher: jobs/s draining {args.jobs:,} finished jobs into "
                  f"SQL, ratio to the same jobs spread over {args.users} users' buckets", machine,
                  params, Baseline(f"drain: spread over {args.users} buckets (now)", spread,
                                   {"passes": max(p for _, p in rates["spread"])}),
                  drain_rows, quick=args.quick)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=16_384)
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--drain-buckets", type=int, default=1_024,
                        help="TOLLGATE_BUCKETS of the drain runs (the default)")
    parser.add_argument("--database-url", default=None, help="default: a SQLite file")
    parser.add_argument("--rounds", type=int, default=3, help="drain rounds of spread and heavy")
    args = parser.parse_args()
    if args.quick:
        args.buckets, args.jobs, args.users = min(args.buckets, 1_024), min(args.jobs, 400), 8
        args.rounds = 1
    with private_redis() as redis_url, tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{Path(folder) / 'history.db'}"
        drained = asyncio.run(measure(redis_url, url, args))
        report(drained, args.out, [("passes", "passes"), ("round_ratios", "per round")])


if __name__ == "__main__":
    main()
