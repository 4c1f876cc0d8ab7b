"""The script cache empties on restart, failover and SCRIPT FLUSH: every call must still work
(EVALSHA gets NOSCRIPT and falls back to EVAL on whichever node owns the keys).

SCRIPT FLUSH runs only on a Redis the tests started: a redis-server of this test's own
(plain and auto-pipelined) or the session's 3-node cluster, never the shared Redis."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from service.state.codes import Code
from service.state.keys import KeySpace
from service.state.plans import PLANS
from service.state.scripts import Script
from service.state.store import Core
from tests.conftest import OwnRedis
from tests.core.conftest import BUCKETS
from tests.core.job_setup import FLUSH_MS, HOLD_MS
from tests.core.redis_state import assert_balanced


async def cached_anywhere(client: Any, shas: list[str]) -> bool:
    if isinstance(client, RedisCluster):
        for node in client.get_nodes():
            found = await client.execute_command("SCRIPT EXISTS", *shas, target_nodes=node)
            if any(found):
                return True
        return False
    return any(await client.script_exists(*shas))


def with_private_scripts(core: Core) -> Core:
    """Gives this test's scripts a sha nobody else uses: other tests and benchmarks share the
    Redis and would load tollgate's own scripts again between a flush and our check."""
    core.scripts = {
        name: Script(name, source, hashlib.sha1(source.encode()).hexdigest())
        for name, script in core.scripts.items()
        for source in [f"{script.source}\n-- private to {core.keys.prefix}\n"]
    }
    return core


async def flushed(core: Core) -> Core:
    """Empties the script cache (on every cluster node) and proves it is empty."""
    await core.client.script_flush()
    assert not await cached_anywhere(core.client, [s.sha for s in core.scripts.values()])
    return core


@pytest.fixture
async def own_client(own_redis: OwnRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(params=["own", "own-pipelined", "cluster"])
def flushable_core(request: pytest.FixtureRequest, key_prefix: str) -> Core:
    fixture = "cluster_redis" if request.param == "cluster" else "own_client"
    return Core(request.getfixturevalue(fixture), KeySpace(key_prefix, BUCKETS),
                autopipeline=request.param == "own-pipelined")


async def test_every_call_works_on_an_empty_script_cache(flushable_core: Core) -> None:
    core = with_private_scripts(flushable_core)
    await (await flushed(core)).ping()
    assert await (await flushed(core)).ensure_user("ann", PLANS["free"], 100) is True
    assert (await (await flushed(core)).grant("ann", "op-1", 50, "promo")).code is Code.OK
    assert await (await flushed(core)).set_plan("ann", "op-2", PLANS["pro"]) is Code.OK
    assert (await (await flushed(core)).rule_slot_take("ann", "r1")).code is Code.OK
    assert await (await flushed(core)).rule_slot_release("ann", "r1") is Code.OK

    jobs = []
    for _ in range(2):
        job_id = core.keys.new_job_id("ann")
        code, _ = await (await flushed(core)).reserve(
            job_id=job_id, user_id="ann", total=2, price=10, hold_ttl_ms=HOLD_MS, meta_json="{}"
        )
        assert code is Code.OK
        for from_state, to_state in (("created", "uploaded"), ("uploaded", "queued"),
                                     ("queued", "running")):
            moved = await (await flushed(core)).transition(job_id, from_state, to_state,
                                                           lease_ms=60_000)
            assert moved.state == to_state
        jobs.append(job_id)
    first, second = jobs

    assert await (await flushed(core)).renew_lease(first, "ann", 60_000) is Code.OK
    progress = await (await flushed(core)).item_result(
        first, "ann", callback_key="k0", index=0, ok=True, detail="o", lease_ms=60_000,
        flush_delay_ms=0,
    )
    assert (progress.code, progress.done) == (Code.OK, 1)
    settled = await (await flushed(core)).settle(first, "ann", "failed", reason="x",
                                                 flush_delay_ms=0)
    assert (settled.charged, settled.refunded) == (10, 10)
    canceled = await (await flushed(core)).cancel(second, "ann", reason="user",
                                                  flush_delay_ms=FLUSH_MS)
    assert canceled.state == "canceled"
    await assert_balanced(core, "ann", jobs)

    bucket = core.keys.bucket_of_user("ann")
    due = await (await flushed(core)).claim_due(bucket, limit=10, claim_ms=1, requeue_after_ms=1)
    assert due.due_flushes == [first]
    assert await (await flushed(core)).flush_done(first, "ann") is Code.OK
    head = await core.client.lindex(core.keys.bucket(bucket).ledger, 0)
    assert await (await flushed(core)).ledger_ack(bucket, 1, head) is Code.OK

    # The fallback refilled the cache: the next call goes by EVALSHA again.
    assert await cached_anywhere(core.client, [core.scripts["ledger_ack"].sha])
