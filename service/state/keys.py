"""Every Redis key tollgate uses, built in one place.

All keys of one bucket carry the hash tag `{b}`, so a Lua script that touches a user, that
user's jobs and the bucket's work indexes stays inside one Redis Cluster hash slot.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import zlib
from dataclasses import dataclass

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_SORTABLE_ID = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}$")
# The due index is split over this many keys so that every API write's ZADD does not land
# on one Redis Cluster node; a flusher pass reads all of them (a fixed cost).
DUE_SHARDS = 16


def new_sortable_id() -> str:
    """A ULID-style id: 48-bit milliseconds then 80 random bits, lower-case base32."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def is_sortable_id(value: str) -> bool:
    """A rule id or the head of a job id: checked before an id from a URL reaches a lookup."""
    return len(value) == 26 and _SORTABLE_ID.match(value) is not None


@dataclass(frozen=True, slots=True)
class KeySpace:
    prefix: str
    buckets: int

    def bucket_of_user(self, user_id: str) -> int:
        return zlib.crc32(user_id.encode()) % self.buckets

    def new_job_id(self, user_id: str) -> str:
        """Job ids carry their bucket, so a worker's callback finds the job without the user."""
        return f"{new_sortable_id()}-{self.bucket_of_user(user_id)}"

    def bucket_of_job(self, job_id: str) -> int | None:
        head, sep, tail = job_id.rpartition("-")
        # Checked before any lookup: an id from a URL may hold anything (NUL, `:`, digits
        # beyond int's string limit).
        if (not sep or len(head) != 26 or not 1 <= len(tail) <= 5 or not tail.isascii()
                or not tail.isdigit() or not is_sortable_id(head)):
            return None
        bucket = int(tail)
        return bucket if bucket < self.buckets else None

    def bucket(self, bucket: int) -> BucketKeys:
        return BucketKeys(f"{self.prefix}:{{{bucket}}}")

    @property
    def buckets_in_use(self) -> str:
        """set: buckets that ever held a user (so counters, jobs, work), added before the
        first script there; a metrics scrape reads only these."""
        return f"{self.prefix}:buckets"

    def apikey_owner(self, key_id: str) -> str:
        """string: the user id of an API key: the one lookup outside a bucket, so that a
        secret (which carries the key id) finds its user's bucket."""
        return f"{self.prefix}:apikey:{key_id}"

    def due_index(self, bucket: int) -> str:
        """zset: bucket -> ms by which the flusher must visit it (service/state/due.py). One
        of DUE_SHARDS keys, each in a hash slot of its own: written by Python after a
        bucket's script (a script may touch only its bucket's slot), never by Lua there."""
        return f"{self.prefix}:due:{{d{bucket % DUE_SHARDS}}}"

    @property
    def due_indexes(self) -> list[str]:
        return [f"{self.prefix}:due:{{d{shard}}}" for shard in range(DUE_SHARDS)]

    @property
    def loss_sentinels(self) -> list[str]:
        """strings, one in each due-index shard's slot: set by the flusher after it checked
        the buckets for users a Redis loss took; a missing one means some node lost data
        (service/flusher/lost_users.py)."""
        return [f"{key}:checked" for key in self.due_indexes]

    def user(self, user_id: str) -> UserKeys:
        return UserKeys(self.bucket(self.bucket_of_user(user_id)), user_id)

    def sched(self, queue: str) -> SchedKeys:
        """One RQ queue's dispatch order across buckets (service/state/sched.py): its own
        hash slot, written by Python after a bucket's script, rebuilt from the buckets'
        waiting sets."""
        tag = queue if _PLAIN_NAME.match(queue) else hashlib.sha256(queue.encode()).hexdigest()[:16]
        return SchedKeys(f"{self.prefix}:sched:{{q:{tag}}}")

    def job(self, job_id: str) -> JobKeys | None:
        bucket = self.bucket_of_job(job_id)
        return None if bucket is None else JobKeys(self.bucket(bucket), job_id)


@dataclass(frozen=True, slots=True)
class BucketKeys:
    tag: str

    @property
    def holds(self) -> str:
        return f"{self.tag}:holds"

    @property
    def leases(self) -> str:
        return f"{self.tag}:leases"

    @property
    def queued(self) -> str:
        return f"{self.tag}:queued"

    @property
    def flush(self) -> str:
        return f"{self.tag}:flush"

    @property
    def ledger(self) -> str:
        return f"{self.tag}:ledger"

    @property
    def webhooks(self) -> str:
        """zset: webhook delivery id -> next attempt ms (the outbox's due index)."""
        return f"{self.tag}:webhooks"

    @property
    def webhook_outcomes(self) -> str:
        """hash: delivery outcome (delivered, failed, gave_up) -> attempts."""
        return f"{self.tag}:webhook-outcomes"

    @property
    def flusher_lock(self) -> str:
        return f"{self.tag}:flusher-lock"

    @property
    def flush_attempts(self) -> str:
        """hash: `<kind>:<record id>` -> failed SQL writes so far, `...:first` -> first ms."""
        return f"{self.tag}:flush-attempts"

    @property
    def grant_expiry(self) -> str:
        """zset: '<user id>:<grant id>' -> expires_at ms, the grants the flusher expires
        (lua/grants_expire.lua)."""
        return f"{self.tag}:grant-expiry"

    @property
    def grant_warn(self) -> str:
        """zset: '<user id>:<grant id>' -> expires_at - 24 h ms, the credits.expiring events
        the flusher records (lua/grants_warn.lua)."""
        return f"{self.tag}:grant-warn"

    @property
    def ledger_retry(self) -> str:
        """zset: ledger entries (as read from the list) that SQL refused -> next attempt ms."""
        return f"{self.tag}:ledger-retry"

    @property
    def waiting(self) -> str:
        """zset: executed job id -> its place in its queue's dispatch order, while it has
        batches not yet handed to RQ (lua/admit.lua, lua/dispatch_done.lua)."""
        return f"{self.tag}:waiting"

    @property
    def counters(self) -> str:
        """hash: business counters of the bucket (field -> count); a scrape sums buckets."""
        return f"{self.tag}:counters"

    @property
    def checked(self) -> str:
        """string: set by the flusher once SQL names no user of this bucket that Redis lacks
        (service/flusher/lost_users.py); a Redis that loses the bucket loses it with it."""
        return f"{self.tag}:checked"


@dataclass(frozen=True, slots=True)
class SchedKeys:
    tag: str

    @property
    def order(self) -> str:
        """zset: waiting job id -> its place (lua/sched_order.lua)."""
        return f"{self.tag}:order"

    @property
    def items(self) -> str:
        return f"{self.tag}:items"

    @property
    def info(self) -> str:
        return f"{self.tag}:info"

    @property
    def deadlines(self) -> str:
        return f"{self.tag}:deadlines"

    @property
    def claims(self) -> str:
        """zset: job id -> when its dispatch claim ends, written before dispatch_take and
        removed after dispatch_done: what a dispatcher killed between the two left."""
        return f"{self.tag}:claims"

    @property
    def lock(self) -> str:
        """string: the dispatcher that fills this queue now (one at a time)."""
        return f"{self.tag}:lock"

    @property
    def waits(self) -> str:
        """hash: the dispatch wait histogram, `<priority>:<le>` -> count, `<priority>:sum`."""
        return f"{self.tag}:waits"


@dataclass(frozen=True, slots=True)
class UserKeys:
    bucket: BucketKeys
    user_id: str

    @property
    def base(self) -> str:
        return f"{self.bucket.tag}:user:{self.user_id}"

    @property
    def active(self) -> str:
        return f"{self.base}:active"

    @property
    def rules(self) -> str:
        return f"{self.base}:rules"

    @property
    def jobs(self) -> str:
        return f"{self.base}:jobs"

    @property
    def ops(self) -> str:
        return f"{self.base}:ops"

    @property
    def webhook_secret(self) -> str:
        """string: `whsec_<base64>`; a key of its own, so setting it never creates a partial
        user hash."""
        return f"{self.base}:webhook-secret"

    def rate(self, klass: str) -> str:
        """string: the request class's GCRA theoretical arrival time, ms (lua/rate_limit.lua)."""
        return f"{self.base}:rate:{klass}"

    def key_rate(self, key_id: str, klass: str) -> str:
        """string: as `rate`, for one API key of the user with a lower limit of its own."""
        return f"{self.base}:key:{key_id}:rate:{klass}"

    @property
    def apikeys(self) -> str:
        """set: the ids of the user's API keys (key slots used = SCARD; lua/key_create.lua)."""
        return f"{self.base}:apikeys"

    def apikey(self, key_id: str) -> str:
        """hash: one API key's record (user_id, hash of the secret, scopes, cap, expiry)."""
        return f"{self.base}:apikey:{key_id}"

    @property
    def grants(self) -> str:
        """hash: grant id -> JSON, the user's credit grants (lua/includes/grants.lua)."""
        return f"{self.base}:grants"

    @property
    def key_spend(self) -> str:
        """hash: `<key id>:p` the key's cap period, `<key id>:s` credits held and charged
        through it in that period (lua/reserve.lua counts, includes/finish_job.lua gives
        back)."""
        return f"{self.base}:key-spend"

    @property
    def alert_log(self) -> str:
        """hash: account webhook delivery id ('acct.<ms>-<n>.<user id>') -> JSON record, the
        newest 50 (lua/includes/alerts.lua); expires once idle like a job's log."""
        return f"{self.base}:account-hooks"

    @property
    def streams(self) -> str:
        """zset: open SSE stream id -> its lease's deadline ms (lua/stream_take.lua)."""
        return f"{self.base}:streams"

    def idempotency(self, key: str) -> str:
        # Hashed: a client's key becomes part of a key name, so it must have a fixed size.
        return f"{self.base}:idem:{hashlib.sha256(key.encode()).hexdigest()}"


@dataclass(frozen=True, slots=True)
class JobKeys:
    bucket: BucketKeys
    job_id: str

    @property
    def base(self) -> str:
        return f"{self.bucket.tag}:job:{self.job_id}"

    @property
    def items(self) -> str:
        return f"{self.base}:items"

    @property
    def callbacks(self) -> str:
        """list: the last 512 callback keys, newest first (the ring)."""
        return f"{self.base}:cb"

    @property
    def callback_set(self) -> str:
        """set: the ring's keys again, kept in step with it, for O(1) membership."""
        return f"{self.base}:cbset"

    @property
    def meta(self) -> str:
        """The job's item descriptions (JSON), written once at reserve and never by Lua logic."""
        return f"{self.base}:meta"

    @property
    def webhooks(self) -> str:
        """hash: webhook delivery id -> JSON record; outlives the job's flush to SQL."""
        return f"{self.base}:webhooks"

    def user(self, user_id: str) -> UserKeys:
        return UserKeys(self.bucket, user_id)
