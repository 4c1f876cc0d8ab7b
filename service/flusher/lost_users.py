"""Users a Redis loss took who make no request: rebuilt by the flusher, not by their return.

A user Redis lost is rebuilt from SQL by its next request (service/jobs/provisioning.py):
its open holds are released, its lost jobs get their `lost_with_redis` rows, and its
balance comes back from the ledger. A user who never comes back would keep those holds open
in SQL for ever, so the flusher looks for them itself.

It must not query SQL on every pass. Each bucket carries a `checked` mark (a key in the
bucket's own hash slot, so it is lost exactly when the bucket's keys are: a restart without
persistence, a Cluster primary that came back empty). Every pass reads 16 loss sentinels,
one in each due-index shard's slot: when one is missing, some node lost data, and every
bucket's mark is read at once; otherwise only the safety net's share of buckets is (every
bucket about once a SAFETY_NET_CYCLE_S, which also catches a node that held no sentinel).
Only when marks are missing does one paged SQL query list the users whose ledger names a job
jobs_log lacks. Those in the unmarked buckets that Redis lacks are restored, then the marks
and sentinels are set. A crash before that redoes the check on the next pass; restoring is
idempotent (a user Redis has is left alone, and the release rows carry their job's id).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from service.history.balances import users_with_jobs_without_row
from service.jobs.provisioning import restore_user
from service.runtime import Runtime
from service.state.due import DueIndex

log = logging.getLogger("tollgate.flusher")

PAGE = 1000


async def rebuild_lost_users(rt: Runtime, buckets: Sequence[int]) -> int:
    """Restores the users of unmarked buckets among `buckets` (every bucket when a loss
    sentinel is missing) that SQL names with work and Redis lacks, then marks the buckets;
    returns how many users were restored."""
    due = DueIndex(rt.core)
    lost_sentinels = await due.missing_sentinels()
    if lost_sentinels:
        buckets = range(rt.core.keys.buckets)
    unmarked = set(await due.unchecked(buckets))
    if not unmarked:
        await due.set_sentinels(lost_sentinels)
        return 0
    restored, after = 0, ""
    while True:
        async with rt.sessions() as session:
            page = await users_with_jobs_without_row(session, after=after, limit=PAGE)
        for user_id in page:
            if (rt.core.keys.bucket_of_user(user_id) in unmarked
                    and not await rt.core.user_exists(user_id)):
                await restore_user(rt, user_id)
                restored += 1
        if len(page) < PAGE:
            break
        after = page[-1]
    await due.mark_checked(sorted(unmarked))
    await due.set_sentinels(lost_sentinels)
    if restored:
        log.warning("rebuilt %d users that Redis lost (their open holds released, their lost "
                    "jobs recorded as %s)", restored, "lost_with_redis")
    return restored
