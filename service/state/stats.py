"""Business totals for /metrics, read from the buckets in one pipeline per scrape.

The scripts keep the counters (lua/includes/stats.lua, the bucket hash `tg:{b}:counters`);
the live gauges come from the work indexes the scripts keep anyway (holds, queued, leases,
flush), so they can never drift from the jobs. Only the buckets in `tg:buckets` (buckets that
ever held a user) are read: a scrape costs one command per bucket kind in use, not per
configured bucket. On a Cluster, redis-py splits the pipeline into one per shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import RedisCluster

from service.state.calls import SPECS, bind
from service.state.store import Core, now_ms

# The live states as the indexes hold them: created and uploaded jobs both hold credits in
# `holds`, so they are one gauge, `reserved`.
LIVE_STATES = ("reserved", "queued", "running")
SCRIPT_GROUP = 128  # buckets per stats_read call (at most its MAX_BUCKETS): a few ms of Redis


@dataclass(slots=True)
class BusinessTotals:
    counters: dict[str, int] = field(default_factory=dict)  # counters-hash field -> sum
    webhook_outcomes: dict[str, int] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LIVE_STATES, 0))
    flush_lag_s: float = 0.0  # age of the oldest due flush record, 0 when none is due
    buckets_read: int = 0


def _bucket_keys(core: Core, bucket: int) -> tuple[str, ...]:
    b = core.keys.bucket(bucket)
    return b.counters, b.webhook_outcomes, b.holds, b.queued, b.leases, b.flush


def _add(totals: dict[str, int], flat: list[str]) -> None:
    """Sums raw counter values in Python integers: exact past 2^53 (Lua's doubles are not)."""
    for i in range(0, len(flat), 2):
        totals[flat[i]] = totals.get(flat[i], 0) + int(flat[i + 1])


def _flat(reply: dict[str, str]) -> list[str]:
    return [item for pair in reply.items() for item in pair]


async def _read_by_script(core: Core, buckets: list[int]) -> list[list[Any]]:
    """stats_read per group of buckets: Redis gathers them, the client sums them."""
    script = core.scripts["stats_read"]
    await core.client.script_load(script.source)  # EVALSHA inside a pipeline cannot fall back
    async with core.client.pipeline(transaction=False) as pipe:
        for start in range(0, len(buckets), SCRIPT_GROUP):
            keys, args = bind("stats_read", keys={"buckets": [
                key for bucket in buckets[start:start + SCRIPT_GROUP]
                for key in _bucket_keys(core, bucket)]})
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies: list[list[Any]] = await pipe.execute()
    return replies


async def _read_by_commands(core: Core, buckets: list[int]) -> list[list[Any]]:
    """The same figures by plain commands: a Cluster pipeline cannot hold scripts, and it
    splits commands into one pipeline per shard."""
    async with core.client.pipeline(transaction=False) as pipe:
        for bucket in buckets:
            counters, outcomes, holds, queued, leases, flush = _bucket_keys(core, bucket)
            pipe.hgetall(counters)
            pipe.hgetall(outcomes)
            pipe.zcard(holds)
            pipe.zcard(queued)
            pipe.zcard(leases)
            pipe.zrange(flush, 0, 0, withscores=True)
        flat = await pipe.execute()
    return [[_flat(flat[i]), _flat(flat[i + 1]), flat[i + 2], flat[i + 3], flat[i + 4],
             f"{flat[i + 5][0][1]:.0f}" if flat[i + 5] else ""] for i in range(0, len(flat), 6)]


async def business_totals(core: Core) -> BusinessTotals:
    members = await core.client.smembers(core.keys.buckets_in_use)
    buckets = sorted(int(b) for b in members if int(b) < core.keys.buckets)
    totals = BusinessTotals(buckets_read=len(buckets))
    if not buckets:
        return totals
    cluster = isinstance(core.client, RedisCluster)
    replies = await (_read_by_commands if cluster else _read_by_script)(core, buckets)
    oldest_due: float | None = None
    for reply in map(SPECS["stats_read"].named, replies):
        _add(totals.counters, reply["counters"])
        _add(totals.webhook_outcomes, reply["outcomes"])
        for state, name in zip(LIVE_STATES, ("held", "queued", "running"), strict=True):
            totals.live[state] += int(reply[name])
        if reply["first_due"]:
            due = float(reply["first_due"])
            oldest_due = due if oldest_due is None else min(oldest_due, due)
    if oldest_due is not None:
        totals.flush_lag_s = max(0.0, (now_ms() - oldest_due) / 1000)
    return totals
