"""The metrics read of the buckets in use (service/state/stats.py): stats_read sums groups of
buckets inside Redis, plain pipelined reads do the same on a Cluster; both agree."""

from __future__ import annotations

from service.state import stats
from service.state.keys import KeySpace
from service.state.store import Core

BUCKETS = 300  # more than two stats_read groups


async def test_totals_sum_the_buckets_in_use_only(core: Core) -> None:
    wide = Core(core.client, KeySpace(core.keys.prefix, BUCKETS))
    keys = wide.keys
    in_use = list(range(0, BUCKETS, 2))  # 150 buckets: two groups of stats_read
    for bucket in in_use:
        b = keys.bucket(bucket)
        await core.client.sadd(keys.buckets_in_use, bucket)
        await core.client.hset(b.counters, mapping={"jobs:thumbnail:done": bucket,
                                                    "credits:charged": 10})
        await core.client.hset(b.webhook_outcomes, mapping={"delivered": 1})
        await core.client.zadd(b.holds, {f"h{bucket}": 1})
        await core.client.zadd(b.leases, {f"l{bucket}": 1, f"m{bucket}": 2})
        await core.client.zadd(b.flush, {f"f{bucket}": 1_000_000 + bucket})
    # A bucket not in the set is not read, whatever it holds.
    await core.client.hset(keys.bucket(5).counters, mapping={"credits:charged": 999})
    totals = await stats.business_totals(wide)
    assert totals.buckets_read == len(in_use)
    assert totals.counters == {"jobs:thumbnail:done": sum(in_use), "credits:charged": 1500}
    assert totals.webhook_outcomes == {"delivered": 150}
    assert totals.live == {"reserved": 150, "queued": 0, "running": 300}
    assert totals.flush_lag_s > 0  # due at 1970 + 1000 s
    ordered = sorted(in_use)
    by_commands = await stats._read_by_commands(wide, ordered)
    assert [reply[5] for reply in by_commands] == [str(1_000_000 + b) for b in ordered]
    if core.client.__class__.__name__ != "RedisCluster":
        by_script = await stats._read_by_script(wide, ordered)
        assert len(by_script) == 2
        assert [reply[5] for reply in by_script] == ["1000000", str(1_000_000 + ordered[128])]
