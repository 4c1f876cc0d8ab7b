"""What a job goes through after its create: confirm (uploads there), execute (queued and
handed to the workers), cancel."""

from __future__ import annotations

import contextlib
from typing import Any

from service.contract import input_key
from service.errors import InvalidTransition, NotFound, UploadsMissing
from service.jobs.dispatch import admit, leave_order
from service.jobs.views import get_job
from service.runtime import Runtime
from service.state.fsm import TERMINAL, JobState


# A retry answers the state (docs/concepts.md): confirm or execute that already took effect, or
# whose moment has passed, answers the job where it is (live, or its history row once
# flushed), never a 409 for the client's own earlier call; 404 when there is no such job.
async def confirm_upload(rt: Runtime, user_id: str, job_id: str) -> dict[str, Any]:
    job = await rt.core.job(job_id)
    if job is None or job.user_id != user_id:  # flushed (final), or none of the caller's
        return await get_job(rt, user_id, job_id)
    if job.state == JobState.CREATED:
        keys = [input_key(job_id, i) for i in range(job.total_items)]
        missing = await rt.storage.missing(keys)
        if missing:
            raise UploadsMissing(f"{len(missing)} of {len(keys)} uploads are missing",
                                 missing=missing)
        # Canceled, expired or flushed since the read: answered below as it now is.
        with contextlib.suppress(InvalidTransition, NotFound):
            await rt.core.transition(job_id, JobState.CREATED, JobState.UPLOADED,
                                     owner=user_id)
    return await get_job(rt, user_id, job_id)


async def execute(rt: Runtime, user_id: str, job_id: str) -> dict[str, Any]:
    job = await rt.core.job(job_id)
    if job is None or job.user_id != user_id:  # flushed (final), or none of the caller's
        return await get_job(rt, user_id, job_id)
    # Also on a repeated execute of a queued job: the first call may have queued it and then
    # failed to reach the dispatch order (a 503 to the client); its retry places it now,
    # not after the flusher's TOLLGATE_REQUEUE_AFTER. Harmless otherwise.
    try:  # the script finds the caller's live job, or says there is none
        if await admit(rt, job) is None:  # its model is gone: failed, refunded
            return await get_job(rt, user_id, job_id)
    except NotFound:  # flushed (final) since the read
        return await get_job(rt, user_id, job_id)
    except InvalidTransition as refused:
        if refused.extra.get("job_status") == JobState.CREATED:  # a true conflict
            raise
    return await get_job(rt, user_id, job_id)  # running or final: not placed again


async def cancel(rt: Runtime, user_id: str, job_id: str) -> dict[str, Any]:
    view = await get_job(rt, user_id, job_id, with_items=False)
    status = view["status"]
    if status in TERMINAL and status != JobState.CANCELED:
        raise InvalidTransition(f"the job is already {status}", job_status=status)
    if status != JobState.CANCELED:  # a repeated cancel answers like the first one
        await rt.core.cancel(job_id, user_id, reason="user",
                             flush_delay_ms=rt.settings.flush_delay * 1000)
        await leave_order(rt, job_id)  # never RQ: a batch handed before is refused
    return await get_job(rt, user_id, job_id)
