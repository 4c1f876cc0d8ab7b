"""The flusher/sweeper process with the API's own re-enqueue, for `tollgate flusher` and dev.

It opens a Runtime (Redis, SQL, storage, RQ queue) because re-enqueueing a queued job that
no worker started needs fresh presigned URLs and the job's callback token.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from service.jobs import dispatch
from service.runtime import open_runtime
from service.settings import Settings
from workers.flusher import flush_once

log = logging.getLogger("tollgate.flusher")


async def run_flusher_with_requeue(settings: Settings, *, once: bool,
                                   stop: threading.Event | None = None) -> None:
    if not settings.jwt_secret:
        raise SystemExit("TOLLGATE_JWT_SECRET is not set (re-enqueued jobs need callback tokens)")
    rt = await open_runtime(settings, settings.jwt_secret)

    async def requeue(job_id: str) -> None:
        await dispatch(rt, job_id)

    try:
        while True:
            stats = await flush_once(rt.core, rt.sessions, settings, requeue=requeue)
            if once or (stop is not None and stop.is_set()):
                print(f"flusher: {stats}", flush=True)
                return
            await asyncio.sleep(settings.flusher_interval)
    finally:
        await rt.close()
