"""`tollgate inspect`: the Redis keys and values behind a user or a job, for operators."""

from __future__ import annotations

from typing import Any

from service.settings import Settings
from service.state.clients import state_redis
from service.state.keys import KeySpace


async def _dump(client: Any, key: str) -> Any:
    kind = await client.type(key)
    if kind == "hash":
        return await client.hgetall(key)
    if kind == "set":
        return sorted(await client.smembers(key))
    if kind == "zset":
        return await client.zrange(key, 0, 99, withscores=True)
    if kind == "list":
        return await client.lrange(key, 0, 99)
    if kind == "string":
        return await client.get(key)
    return None


async def _report(settings: Settings, keys: list[str]) -> dict[str, Any]:
    client = state_redis(settings)
    try:
        return {key: await _dump(client, key) for key in keys}
    finally:
        await client.aclose()


async def inspect_user(settings: Settings, user_id: str) -> dict[str, Any]:
    user = KeySpace(settings.key_prefix, settings.buckets).user(user_id)
    return await _report(settings, [user.base, user.active, user.rules, user.jobs, user.ops])


async def inspect_job(settings: Settings, job_id: str) -> dict[str, Any]:
    keyspace = KeySpace(settings.key_prefix, settings.buckets)
    job = keyspace.job(job_id)
    if job is None:
        return {"error": f"{job_id!r} is not a tollgate job id"}
    report = await _report(settings, [job.base, job.items, job.callbacks, job.meta])
    client = state_redis(settings)
    try:
        b = job.bucket
        report["indexes"] = {
            name: await client.zscore(key, job_id)
            for name, key in (("holds", b.holds), ("leases", b.leases), ("queued", b.queued),
                              ("flush", b.flush))
        }
    finally:
        await client.aclose()
    return report
