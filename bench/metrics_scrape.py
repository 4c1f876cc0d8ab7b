"""What one /metrics scrape costs in Redis as buckets grow: ms per scrape of the business
metrics (service/state/stats.py + the text rendering), at 64, 1,024 and 16,384 buckets.

Two fillings per bucket count: every bucket in use (the worst case: at least as many users
as buckets), and 100 buckets in use (few users, many buckets: the scrape reads only the
buckets in `tg:buckets`). Each bucket in use gets counters, webhook outcomes, a held, a
queued, a running and a flushing job id. The baseline is one HGETALL round trip, measured in
the same run.

    python bench/metrics_scrape.py [--redis-url redis://127.0.0.1:6379/0] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from redis.asyncio import Redis

from service.api.business_metrics import business_metrics
from service.state.keys import KeySpace
from service.state.store import Core, now_ms

SIZES = (64, 1024, 16384)
FEW_IN_USE = 100


async def fill(client: Redis, keys: KeySpace, in_use: int) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for bucket in range(0, keys.buckets, max(1, keys.buckets // in_use))[:in_use]:
            b = keys.bucket(bucket)
            pipe.sadd(keys.buckets_in_use, bucket)
            pipe.hset(b.counters, mapping={"jobs:thumbnail:done": 7, "jobs:thumbnail:failed": 1,
                                           "items:thumbnail:ok": 50, "credits:charged": 50,
                                           "credits:refunded": 6, "credits:granted": 100})
            pipe.hset(b.webhook_outcomes, mapping={"delivered": 3, "failed": 1})
            for index, name in enumerate((b.holds, b.queued, b.leases, b.flush)):
                pipe.zadd(name, {f"job-{bucket}-{index}": now_ms()})
        await pipe.execute()


async def drop(client: Redis, prefix: str) -> None:
    async for key in client.scan_iter(match=f"{prefix}:*", count=5000):
        await client.delete(key)


async def per_scrape_ms(core: Core, rounds: int) -> float:
    await business_metrics(core)  # warm: connection, script-free reads
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await business_metrics(core)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    client = Redis.from_url(args.redis_url, decode_responses=True)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    try:
        await client.hset(f"{prefix}:one", mapping={"a": 1})
        baseline = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            await client.hgetall(f"{prefix}:one")
            baseline.append((time.perf_counter() - started) * 1000)
        base_ms = statistics.median(baseline)
        print(f"baseline: one HGETALL round trip {base_ms:.3f} ms")
        print(f"{'buckets':>8} {'in use':>7} {'ms/scrape':>10} {'x baseline':>11}")
        for size in SIZES:
            for in_use in sorted({min(size, FEW_IN_USE), size}):
                keys = KeySpace(f"{prefix}s{size}u{in_use}", size)
                await fill(client, keys, in_use)
                ms = await per_scrape_ms(Core(client, keys), args.rounds)
                print(f"{size:>8} {in_use:>7} {ms:>10.2f} {ms / base_ms:>11.0f}")
                await drop(client, keys.prefix)
    finally:
        await drop(client, prefix)
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
