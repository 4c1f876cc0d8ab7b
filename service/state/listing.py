"""The reads behind GET /jobs: a window of a user's job index, never the whole index.

The user's `jobs` zset scores each live job id by its creation time (ms); members of one
score sort by id, so a reverse range walks (created_at, id) newest first, as SQL history
does, and a cursor (ms, id) resumes exactly where the last page stopped.
"""

from __future__ import annotations

from typing import Any

from service.state.records import JobRecord

Position = tuple[int, str]  # (created_at ms, job id)


async def job_index_window(core: Any, user_id: str, before: Position | None, count: int
                           ) -> list[Position]:
    """Up to `count` entries of the user's live-job index strictly below `before`, newest
    first: one ZREVRANGEBYSCORE with LIMIT (plus one more per batch of equal timestamps at
    the cursor, which only a burst within one millisecond makes)."""
    index = core.keys.user(user_id).jobs
    top = "+inf" if before is None else before[0]
    skip = 0
    while True:
        raw = (await core._read(("ZREVRANGEBYSCORE", index, top, "-inf", "WITHSCORES",
                                 "LIMIT", 0, count + skip)))[0]
        entries = _pairs(raw)
        # Entries at the cursor's own ms with an id not below the cursor's were on a page
        # already; the rest, in (ms, id) order, follow it.
        kept = [e for e in entries if before is None or e < before]
        if len(kept) >= count or len(entries) < count + skip:
            return kept[:count]
        skip = len(entries) - len(kept)


def _pairs(raw: Any) -> list[Position]:
    if raw and isinstance(raw[0], list | tuple):  # RESP3 or a client that pairs them
        return [(int(float(score)), str(member)) for member, score in raw]
    return [(int(float(raw[i + 1])), str(raw[i])) for i in range(0, len(raw), 2)]


async def active_jobs(core: Any, user_id: str) -> list[JobRecord]:
    """The user's jobs not yet terminal: its concurrency slots, so at most its plan's limit."""
    job_ids = sorted((await core._read(("SMEMBERS", core.keys.user(user_id).active)))[0])
    return [job for job in await core.jobs(job_ids) if job is not None]
