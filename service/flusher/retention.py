"""How long files live: a job's inputs go when it ends, its outputs TOLLGATE_RESULT_TTL later.

The flusher deletes the inputs of the jobs it flushes (after their rows are committed, so a
crash only repeats the deletion), and the outputs of their items that did not end ok (a
canceled job's worker may have uploaded some: unpaid_outputs), and once per pass deletes
the whole folder of jobs that finished more than the TTL ago: outputs, and any input a late
presigned S3 PUT brought back (S3 cannot refuse a PUT whose URL is still valid).
jobs_log.results_deleted_at marks them; the job view (service.jobs.views) then says
`result_expired` and hands out no URL.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.contract import input_key, job_files, output_key
from service.history.models import utcnow
from service.history.retention import (
    kept_inputs_due,
    mark_inputs_deleted,
    mark_results_deleted,
    results_due,
)
from service.storage import Storage

log = logging.getLogger("tollgate.flusher")

# Jobs whose folders one pass deletes; the next pass takes the next ones.
EXPIRED_PER_PASS = 100


async def delete_inputs(storage: Storage, jobs: list[tuple[str, int]]) -> None:
    """Deletes the inputs of finished jobs, given as (job id, item count).

    A storage outage must not hold up the flush: what is left goes with the job's folder
    when its results expire.
    """
    await _delete(storage, [input_key(job_id, index) for job_id, total in jobs
                            for index in range(total)], len(jobs))


def unpaid_outputs(job_id: str, total: int, items: Mapping[str, str]) -> list[str]:
    """The output keys of a finished job's items that did not end ok (`items`: the job's
    items hash, index -> 'ok:<key>' | 'failed:<error>'). A worker still running when its job
    was canceled, or lost its lease, may have uploaded results whose reports were refused:
    no client can reach them and nobody paid for them. An item that ended ok keeps its
    output (it was charged) until TOLLGATE_RESULT_TTL."""
    return [output_key(job_id, index) for index in range(total)
            if not items.get(str(index), "").startswith("ok:")]


async def delete_finished_files(storage: Storage,
                                jobs: list[tuple[str, int, Mapping[str, str]]], *,
                                keep_failed_inputs: bool = False) -> None:
    """At a job's flush: its inputs, and its outputs that no item paid for (unpaid_outputs),
    given as (job id, item count, items hash). `keep_failed_inputs`: the inputs of items
    that failed stay for POST /jobs/{id}/retry (expire_kept_inputs deletes them later)."""
    def kept(items: Mapping[str, str], index: int) -> bool:
        return keep_failed_inputs and items.get(str(index), "").startswith("failed:")

    keys = [key for job_id, total, items in jobs
            for key in [*(input_key(job_id, index) for index in range(total)
                          if not kept(items, index)),
                        *unpaid_outputs(job_id, total, items)]]
    await _delete(storage, keys, len(jobs))


async def _delete(storage: Storage, keys: list[str], jobs: int) -> None:
    if not keys:
        return
    try:
        await storage.delete(keys)
    except Exception as error:
        log.warning("deleting the inputs of %d finished jobs failed (%s: %s); they go with "
                    "the results", jobs, type(error).__name__, error)


async def expire_results(
    sessions: async_sessionmaker[AsyncSession], storage: Storage, ttl_s: int,
    *, limit: int = EXPIRED_PER_PASS,
) -> int:
    """Deletes the folders of jobs finished more than `ttl_s` ago; returns how many."""
    async with sessions() as session:
        due = await results_due(session, utcnow() - timedelta(seconds=ttl_s), limit)
    for job_id in due:
        await storage.delete_prefix(job_files(job_id))
    if due:
        async with sessions() as session, session.begin():
            await mark_results_deleted(session, due)
    return len(due)


async def expire_kept_inputs(
    sessions: async_sessionmaker[AsyncSession], storage: Storage, window_s: int,
    *, limit: int = EXPIRED_PER_PASS,
) -> int:
    """Deletes the inputs kept for a retry of jobs finished more than `window_s` ago
    (POST /jobs/{id}/retry is 410 from then on); returns how many jobs."""
    async with sessions() as session:
        due = await kept_inputs_due(session, utcnow() - timedelta(seconds=window_s), limit)
    try:
        await storage.delete([input_key(job_id, index) for job_id, indexes in due
                              for index in indexes])
    except Exception as error:  # the next pass tries again; the folder goes at the TTL
        log.warning("deleting the kept inputs of %d jobs failed (%s: %s)", len(due),
                    type(error).__name__, error)
        return 0
    if due:
        async with sessions() as session, session.begin():
            await mark_inputs_deleted(session, [job_id for job_id, _ in due])
    return len(due)
