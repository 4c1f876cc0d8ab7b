"""What the scheduling tests share: jobs arranged behind the API, fake workers, a dispatcher.

A "worker" here is an RQ worker registration (its heartbeat key and its queue's set) and a
batch "starts" when the test pops it from the RQ list, as a worker's dequeue does: the
order of the pops is the order batches start in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator
from typing import Any

from rq import Queue

from service.flusher.dispatcher import Dispatcher, Hook
from service.jobs.dispatch import admit
from service.jobs.provisioning import as_known_user, provision_user
from service.runtime import Runtime, open_runtime
from service.settings import Settings
from service.state.records import JobRecord
from service.state.store import now_ms


def queue_key(rt: Runtime, queue: str | None = None) -> str:
    return Queue.redis_queue_namespace_prefix + (queue or rt.settings.queue_name)


def register_worker(rt: Runtime, name: str, queue: str | None = None, ttl_s: int = 60) -> None:
    """A live RQ worker of `queue` as the dispatcher counts them (no process behind it)."""
    queue = queue or rt.settings.queue_name
    key = f"rq:worker:{rt.settings.key_prefix}-{name}"
    connection = rt.queue_connection
    connection.hset(key, "queues", queue)
    connection.expire(key, ttl_s)
    connection.sadd(f"rq:workers:{queue}", key)
    connection.sadd("rq:workers", key)


def start_batch(rt: Runtime) -> tuple[str, int] | None:
    """A worker takes the next batch of the RQ queue: (tollgate job id, batch number)."""
    raw = rt.queue_connection.lpop(queue_key(rt))
    if raw is None:
        return None
    rq_id = raw.decode() if isinstance(raw, bytes) else str(raw)
    job_id, _, batch = rq_id.removeprefix("tg-").rpartition("-")
    return job_id, int(batch)


def rq_batches(rt: Runtime) -> list[tuple[str, int]]:
    found = []
    for raw in rt.queue_connection.lrange(queue_key(rt), 0, -1):
        rq_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        job_id, _, batch = rq_id.removeprefix("tg-").rpartition("-")
        found.append((job_id, int(batch)))
    return found


async def fund(rt: Runtime, user: str, amount: int, plan: str = "free") -> None:
    """A new user of `plan` with `amount` credits."""
    assert await provision_user(rt, user, plan=plan, credits=amount)


async def uploaded_job(rt: Runtime, user: str, items: int, **reserve: Any) -> JobRecord:
    """A job created uploaded (its inputs are not needed to dispatch it)."""
    model = rt.models.get(None)
    meta = [{"name": f"i{i}.png", "content_type": "image/png", "size": 10}
            for i in range(items)]
    job_id = rt.core.keys.new_job_id(user)
    await as_known_user(rt, user, functools.partial(
        rt.core.reserve, job_id=job_id, user_id=user, total=items,
        price=model.price_per_item, model=model.name, hold_ttl_ms=3_600_000,
        meta_json=json.dumps(meta), uploaded=True, **reserve))
    job = await rt.core.job(job_id)
    assert job is not None
    return job


async def executed_job(rt: Runtime, user: str, items: int, **reserve: Any) -> JobRecord:
    job = await uploaded_job(rt, user, items, **reserve)
    assert await admit(rt, job) is not None
    return job


def dispatcher(rt: Runtime, *, claim_ms: int = 10_000, lock_ms: int = 5_000,
               hook: Hook | None = None) -> Dispatcher:
    return Dispatcher(rt, claim_ms=claim_ms, lock_ms=lock_ms, hook=hook)


async def one_pass(d: Dispatcher) -> int:
    await d.read_workers(force=True)
    return await d.pass_once()


def deadline_in(seconds: float) -> int:
    return now_ms() + int(seconds * 1000)


async def drain(settings: Settings) -> int:
    """Hands every waiting batch to RQ whatever workers are live: for a test's `--burst`
    worker, which would find RQ empty and stop before any dispatcher saw it."""
    rt = await open_runtime(settings, settings.jwt_secret or "")
    try:
        once = Dispatcher(rt, fixed_room=1_000_000)
        handed = await once.pass_once()
        await once.release()
        return handed
    finally:
        await rt.close()


@contextlib.asynccontextmanager
async def dispatching(settings: Settings) -> AsyncIterator[Dispatcher]:
    """A dispatcher running beside the test, as the flusher process runs one."""
    rt = await open_runtime(settings, settings.jwt_secret or "")
    stop = asyncio.Event()
    running = Dispatcher(rt)
    task = asyncio.create_task(running.run(stop))
    try:
        yield running
    finally:
        stop.set()
        await task
        await rt.close()
