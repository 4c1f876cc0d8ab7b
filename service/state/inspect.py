"""The Redis keys and values behind a user or a job, as they are, for operators."""

from __future__ import annotations

from typing import Any

from service.state.store import Core

MEMBERS_SHOWN = 100


async def _dump(client: Any, key: str) -> Any:
    kind = await client.type(key)
    if kind == "hash":
        return await client.hgetall(key)
    if kind == "set":
        return sorted(await client.smembers(key))
    if kind == "zset":
        return await client.zrange(key, 0, MEMBERS_SHOWN - 1, withscores=True)
    if kind == "list":
        return await client.lrange(key, 0, MEMBERS_SHOWN - 1)
    if kind == "string":
        return await client.get(key)
    return None


async def describe_user(core: Core, user_id: str) -> dict[str, Any]:
    user = core.keys.user(user_id)
    return {key: await _dump(core.client, key)
            for key in (user.base, user.active, user.rules, user.jobs, user.ops)}


async def describe_job(core: Core, job_id: str) -> dict[str, Any]:
    job = core.keys.job(job_id)
    if job is None:
        return {"error": f"{job_id!r} is not a tollgate job id"}
    report = {key: await _dump(core.client, key)
              for key in (job.base, job.items, job.callbacks, job.meta)}
    b = job.bucket
    report["indexes"] = {
        name: await core.client.zscore(key, job_id)
        for name, key in (("holds", b.holds), ("leases", b.leases), ("queued", b.queued),
                          ("flush", b.flush))
    }
    return report
