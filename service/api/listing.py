"""GET /jobs: live jobs (Redis) and history (SQL) merged newest first, reading only a page.

Each source is read below the cursor for at most a page (plus one, to know whether more
follow): the live index by ZREVRANGEBYSCORE ... LIMIT and only those jobs' hashes, history by
one index range scan. A status filter on a live state reads the user's active set, which
its plan's concurrency bounds. A filter on a terminal state reads a bounded window of the
index: when the window fills before the page does, the page stops at the window's end and
its cursor resumes from there (a page may then hold fewer than `limit` jobs).
"""

from __future__ import annotations

from typing import Any

from service.history.queries import history_page
from service.jobs.views import decode_cursor, encode_cursor, job_view, with_queue_position
from service.runtime import Runtime
from service.state.fsm import TERMINAL
from service.state.listing import Position, active_jobs, job_index_window
from service.state.records import JobRecord, datetime_to_ms, ms_to_datetime

# How many live index entries a page with a terminal-status filter may read, per job asked.
FILTER_WINDOW_PER_JOB = 4


async def _live(rt: Runtime, user_id: str, status: str | None, before: Position | None,
                limit: int) -> tuple[list[JobRecord], Position | None]:
    """The live jobs that may be on this page, and the position below which the live side
    was not read (None when it was read to its end)."""
    if status is not None and status not in TERMINAL:
        jobs = [job for job in await active_jobs(rt.core, user_id) if job.state == status
                and (before is None or (datetime_to_ms(job.created_at), job.id) < before)]
        return jobs, None
    window = limit + 1 if status is None else FILTER_WINDOW_PER_JOB * (limit + 1)
    entries = await job_index_window(rt.core, user_id, before, window)
    records = await rt.core.jobs([job_id for _, job_id in entries])
    jobs = [job for job in records if job is not None and (status is None or job.state == status)]
    return jobs, (entries[-1] if len(entries) == window else None)


async def list_jobs(rt: Runtime, user_id: str, *, status: str | None, limit: int,
                    cursor: str | None) -> dict[str, Any]:
    before = decode_cursor(cursor) if cursor else None
    live, floor = await _live(rt, user_id, status, before, limit)
    after = None if before is None else (ms_to_datetime(before[0]), before[1])
    async with rt.sessions() as session:
        rows = await history_page(session, user_id, limit=limit + 1, before=after, state=status)
    merged: dict[str, tuple[Position, JobRecord | Any]] = {}
    for row in rows:
        merged[row.id] = ((datetime_to_ms(row.created_at), row.id), row)
    for job in live:  # a job flushed but not yet deleted from Redis: show it once
        merged[job.id] = ((datetime_to_ms(job.created_at), job.id), job)
    ordered = sorted(merged.values(), key=lambda entry: entry[0], reverse=True)
    if floor is not None:  # below the window's end, live jobs were not read: stop there
        ordered = [entry for entry in ordered if entry[0] >= floor]
    page = ordered[:limit]
    if len(ordered) > limit:
        next_cursor: str | None = encode_cursor(*page[-1][0])
    elif floor is not None:
        next_cursor = encode_cursor(*floor)
    else:
        next_cursor = None
    # Queued jobs are at most the plan's concurrency: their places cost a read each.
    items = [await with_queue_position(rt, job_view(rt, job, False)) for _, job in page]
    return {"items": items, "next_cursor": next_cursor}
