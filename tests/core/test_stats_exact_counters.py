"""Business counters summed over buckets stay exact integers at any size (issue 23, low
finding): a sum past 10^14 once came back from Lua as '1.0100000000003e+14' and /metrics
answered 500. On fakeredis, Redis (stats_read.lua) and Cluster (plain commands)."""

from __future__ import annotations

from service.state.stats import business_totals
from service.state.store import Core


async def test_counters_past_2_to_the_53_are_summed_exactly(core: Core) -> None:
    values = {0: 50_000_000_000_001, 1: 51_000_000_000_002, 2: 2**53 + 1}
    for bucket, value in values.items():
        await core.client.sadd(core.keys.buckets_in_use, bucket)
        await core.client.hset(core.keys.bucket(bucket).counters,
                               mapping={"jobs:created": value, "items:done": 1})
        await core.client.hset(core.keys.bucket(bucket).webhook_outcomes, "delivered", value)
    totals = await business_totals(core)
    assert totals.counters == {"jobs:created": sum(values.values()), "items:done": 3}
    assert totals.webhook_outcomes == {"delivered": sum(values.values())}
    assert totals.buckets_read == 3
