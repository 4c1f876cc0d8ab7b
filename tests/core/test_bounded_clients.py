"""A burst of calls waits for a connection on every back end; it never fails for want of one.

redis-py's plain pools (fakeredis's, and each node's pool in a Cluster client) raise
MaxConnectionsError at once when full. The flusher's first pass gathers 256 scripts, so before
the Gate `tollgate dev` and a Cluster flusher failed every pass while a standalone Redis (with
its blocking pool) passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.flusher.loop import reindex_buckets
from service.runtime import make_core
from service.settings import Settings
from service.state.clients import state_redis
from service.state.due import DueIndex

LIMIT = 4
BURST = 400


@pytest.fixture(params=["fake", "real", "cluster"])
async def bounded(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Any]:
    """state_redis() exactly as the processes build it, with a pool of LIMIT connections."""
    url = {"fake": lambda: None, "real": lambda: request.getfixturevalue("redis_url"),
           "cluster": lambda: request.getfixturevalue("cluster_url")}[request.param]()
    settings = Settings(redis_url=url, redis_max_connections=LIMIT, key_prefix=key_prefix,
                        buckets=1024)
    client = state_redis(settings)
    client.tollgate_settings = settings
    yield client
    async for key in client.scan_iter(match=f"{key_prefix}:*", count=1000):
        await client.delete(key)
    await client.aclose()


async def test_a_burst_of_scripts_waits_for_the_pool_instead_of_failing(
        bounded: Any, key_prefix: str) -> None:
    gate = getattr(bounded, "gate", None)
    peak = 0

    async def one(i: int) -> Any:
        nonlocal peak
        if gate is not None:
            peak = max(peak, gate.in_flight)
        return await bounded.eval("return redis.call('INCR', KEYS[1])", 1,
                                  f"{key_prefix}:{{{i % 7}}}:n")

    replies = await asyncio.gather(*(one(i) for i in range(BURST)), return_exceptions=True)
    assert [r for r in replies if isinstance(r, BaseException)] == []
    counts = [int(await bounded.get(f"{key_prefix}:{{{k}}}:n")) for k in range(7)]
    assert counts == [len(range(k, BURST, 7)) for k in range(7)]
    if gate is not None:
        assert gate.waited > 0 and peak <= LIMIT


async def test_a_burst_of_pipelines_waits_too(bounded: Any, key_prefix: str) -> None:
    async def one(i: int) -> list[Any]:
        async with bounded.pipeline(transaction=False) as pipe:
            pipe.incr(f"{key_prefix}:{{p}}:n")
            pipe.get(f"{key_prefix}:{{p}}:n")
            result: list[Any] = await pipe.execute()
            return result

    replies = await asyncio.gather(*(one(i) for i in range(100)), return_exceptions=True)
    assert [r for r in replies if isinstance(r, BaseException)] == []
    assert int(await bounded.get(f"{key_prefix}:{{p}}:n")) == 100


async def test_the_flushers_first_pass_reads_every_bucket_on_a_small_pool(bounded: Any) -> None:
    """The safety net's read of all 1,024 buckets gathers 256 scripts at a time."""
    settings: Settings = bounded.tollgate_settings
    core = make_core(bounded, settings)
    assert await reindex_buckets(core, settings, "all") == 0
    assert await DueIndex(core).take(1, limit=settings.buckets) == []
