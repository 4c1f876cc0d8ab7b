"""`tollgate rebucket --to N`: move every user's Redis keys to a new bucket count.

Run it with the API, the workers and the flusher stopped and TOLLGATE_BUCKETS still at the
count the data has; then start everything with TOLLGATE_BUCKETS=N. What moves and what
stays is in service/state/rebucket.py and the README ("Changing TOLLGATE_BUCKETS").
"""

from __future__ import annotations

from service.settings import Settings
from service.state.clients import state_redis
from service.state.rebucket import RebucketRefused, rebucket


async def run_rebucket(settings: Settings, new_buckets: int, *, dry_run: bool) -> int:
    if not 1 <= new_buckets <= 16384:
        print("rebucket: --to must be between 1 and 16384")
        return 2
    client = state_redis(settings)
    try:
        report = await rebucket(client, settings.key_prefix, settings.buckets, new_buckets,
                                dry_run=dry_run)
    except RebucketRefused as refused:
        print(f"rebucket: refused: {refused}")
        return 1
    finally:
        await client.aclose()
    verb = "would move" if dry_run else "moved"
    print(f"rebucket: {settings.buckets} -> {new_buckets} buckets: {report.users} users, "
          f"{verb} {report.moved_keys} keys of {report.moved_users} users"
          + ("" if dry_run else f"; now start every process with TOLLGATE_BUCKETS={new_buckets}"))
    return 0
