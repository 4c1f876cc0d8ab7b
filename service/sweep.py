"""The flusher/sweeper process with the API's own re-enqueue, for `tollgate flusher` and dev.

Re-enqueueing a queued job that no worker started needs fresh presigned URLs and the job's
callback token, so this opens a Runtime for it and hands `workers.flusher` the hook.
"""

from __future__ import annotations

from service.jobs import dispatch
from service.runtime import open_runtime
from service.settings import Settings
from workers.flusher import run_flusher


async def run_flusher_with_requeue(settings: Settings, *, once: bool) -> None:
    if not settings.jwt_secret:
        raise SystemExit("TOLLGATE_JWT_SECRET is not set (re-enqueued jobs need callback tokens)")
    rt = await open_runtime(settings, settings.jwt_secret)

    async def requeue(job_id: str) -> None:
        await dispatch(rt, job_id)

    try:
        await run_flusher(settings, once=once, requeue=requeue)
    finally:
        await rt.close()
