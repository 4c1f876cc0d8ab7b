"""The due index: which buckets the flusher must visit, and from when.

`tg:due:{dN}` (DUE_SHARDS zsets, service/state/keys.py) map a bucket to the ms by which its
next visit is due. Three writers, all outside the bucket's own scripts (a script may touch
one hash slot only, and every shard has a slot of its own):

- Core marks a bucket after a script there that created due work (`ZADD LT`: a score only
  ever goes down, so a mark never postpones an earlier one);
- the flusher takes the due buckets (`due_take.lua`, score -> a placeholder far in the
  future), visits them, reads the bucket's next due time (`bucket_next_due.lua`, from its
  holds, leases, queued, flush, ledger, ledger-retry and grant-expiry keys) and settles it
  (`due_settle.lua`): still at its placeholder -> the time read (or out of the index);
  lowered meanwhile by a write -> the lower of both;
- the safety net (`reindex`) reads the next due time of a list of buckets and lowers their
  scores to it: it finds work whose mark was lost (a process that died between its script
  and its ZADD) and buckets left at a placeholder by a flusher that died mid-visit.

The set of buckets in use (`tg:buckets`, read by the webhook sender, queue position and the
metrics scrape) is a hint too: a process re-adds a bucket at most every 10 minutes, so a
wiped Redis would hide the bucket until then. `found_in_use` rebuilds it from the keys that
exist, and the flusher's safety net runs it over every bucket once a cycle.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterable, Sequence

from service.state.store import Core, now_ms

# Scores at or above this are placeholders of a visit in progress (about year 144,000);
# below 2**53, so every placeholder is an exact double.
PLACEHOLDER_FLOOR = 2**52
# Scripts gathered at once by a safety-net read (joined into pipelines by the runner).
REINDEX_GROUP = 256


def new_placeholder() -> int:
    """A score of its own for one pass, so a settle knows its visit's mark from another's."""
    return PLACEHOLDER_FLOOR + 1 + secrets.randbelow(2**40)


class DueIndex:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.keys = core.keys

    async def take(self, placeholder: int, *, limit: int, at_ms: int | None = None) -> list[int]:
        """Due buckets of every shard (at most `limit` a shard), set to `placeholder`."""
        await self.core.marks.sent()  # this process's own marks first
        now = now_ms() if at_ms is None else at_ms
        replies = await asyncio.gather(*(
            self.core.run_script("due_take", keys={"due_index": key},
                                 args={"now": now, "limit": limit, "placeholder": placeholder})
            for key in self.keys.due_indexes))
        return sorted(int(bucket) for reply in replies for bucket in reply
                      if int(bucket) < self.keys.buckets)

    async def next_due(self, bucket: int, requeue_after_ms: int) -> int | None:
        """The ms by which the bucket needs its next visit (None: it has no work)."""
        b = self.keys.bucket(bucket)
        due = int(await self.core.run_script(
            "bucket_next_due",
            keys={"holds": b.holds, "leases": b.leases, "queued": b.queued, "flush": b.flush,
                  "ledger": b.ledger, "ledger_retry": b.ledger_retry,
                  "grant_expiry": b.grant_expiry, "grant_warn": b.grant_warn},
            args={"requeue_after_ms": requeue_after_ms, "now": now_ms()}))
        return None if due < 0 else due

    async def settle(self, bucket: int, placeholder: int | None, next_due: int | None) -> str:
        """After a visit (`placeholder` it set) or a safety-net read (None: any placeholder)."""
        reply = await self.core.run_named(
            "due_settle", keys={"due_index": self.keys.due_index(bucket)},
            args={"bucket": bucket, "placeholder": "" if placeholder is None else placeholder,
                  "next_due": -1 if next_due is None else next_due,
                  "placeholder_floor": PLACEHOLDER_FLOOR})
        return str(reply["outcome"])

    async def reindex(self, buckets: Iterable[int], requeue_after_ms: int) -> int:
        """The safety net: every bucket's score lowered to its real next due time (a bucket
        stuck at a dead flusher's placeholder with no work leaves the index). Returns how
        many buckets have work."""
        pending = list(buckets)
        with_work = 0
        for start in range(0, len(pending), REINDEX_GROUP):
            group = pending[start:start + REINDEX_GROUP]
            dues = await asyncio.gather(*(self.next_due(b, requeue_after_ms) for b in group))
            with_work += sum(due is not None for due in dues)
            await asyncio.gather(*(self.settle(b, None, due)
                                   for b, due in zip(group, dues, strict=True)))
        return with_work

    async def found_in_use(self, buckets: Sequence[int]) -> list[int]:
        """The buckets of `buckets` that hold any of tollgate's per-bucket keys, added back to
        the set in use (one EXISTS a bucket: its keys share a slot)."""
        found: list[int] = []
        for start in range(0, len(buckets), REINDEX_GROUP):
            group = buckets[start:start + REINDEX_GROUP]
            counts = await asyncio.gather(*(
                self.core.runner.execute_command("EXISTS", *self._marker_keys(bucket))
                for bucket in group))
            found += [bucket for bucket, count in zip(group, counts, strict=True)
                      if int(count) > 0]
        if found:
            await self.core.client.sadd(self.keys.buckets_in_use, *found)
        return found

    def _marker_keys(self, bucket: int) -> list[str]:
        """Keys that exist while a bucket holds a user or work: every script that provisions
        or restores a user counts into `counters`; the rest are work the flusher or the
        webhook sender must still do."""
        b = self.keys.bucket(bucket)
        return [b.counters, b.webhooks, b.holds, b.leases, b.queued, b.flush, b.ledger,
                b.ledger_retry, b.grant_expiry]

    async def buckets_in_use(self) -> list[int]:
        """The buckets that ever held a user (Core marks them): the only ones with work."""
        members = await self.core.client.smembers(self.keys.buckets_in_use)
        return sorted(b for b in (int(m) for m in members) if b < self.keys.buckets)

    async def scores(self) -> dict[int, float]:
        """Every indexed bucket and its score (tests and `tollgate inspect`)."""
        await self.core.marks.sent()
        found: dict[int, float] = {}
        for key in self.keys.due_indexes:
            for member, score in await self.core.client.zrange(key, 0, -1, withscores=True):
                found[int(member)] = float(score)
        return found

    async def missing_sentinels(self) -> list[str]:
        """The loss sentinels (one a due shard) Redis lacks: a fresh Redis, or a node lost."""
        sentinels = self.keys.loss_sentinels
        found = await asyncio.gather(*(self.core.runner.execute_command("EXISTS", key)
                                       for key in sentinels))
        return [key for key, count in zip(sentinels, found, strict=True) if int(count) == 0]

    async def set_sentinels(self, keys: Sequence[str]) -> None:
        await asyncio.gather(*(self.core.runner.execute_command("SET", key, "1")
                               for key in keys))

    async def unchecked(self, buckets: Sequence[int]) -> list[int]:
        """The buckets of `buckets` whose `checked` mark is missing: never checked, or lost
        with the Redis (or the Cluster primary) that held the bucket."""
        missing: list[int] = []
        for start in range(0, len(buckets), REINDEX_GROUP):
            group = buckets[start:start + REINDEX_GROUP]
            found = await asyncio.gather(*(
                self.core.runner.execute_command("EXISTS", self.keys.bucket(bucket).checked)
                for bucket in group))
            missing += [bucket for bucket, count in zip(group, found, strict=True)
                        if int(count) == 0]
        return missing

    async def mark_checked(self, buckets: Sequence[int]) -> None:
        for start in range(0, len(buckets), REINDEX_GROUP):
            await asyncio.gather(*(
                self.core.runner.execute_command("SET", self.keys.bucket(bucket).checked, "1")
                for bucket in buckets[start:start + REINDEX_GROUP]))
