"""Every Redis key tollgate uses, built in one place.

All keys of one bucket carry the hash tag `{b}`, so a Lua script that touches a user, that
user's jobs and the bucket's work indexes stays inside one Redis Cluster hash slot.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_sortable_id() -> str:
    """A ULID-style id: 48-bit milliseconds then 80 random bits, lower-case base32."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


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
        if not sep or len(head) != 26 or not tail.isdigit():
            return None
        bucket = int(tail)
        return bucket if bucket < self.buckets else None

    def bucket(self, bucket: int) -> BucketKeys:
        return BucketKeys(f"{self.prefix}:{{{bucket}}}")

    def user(self, user_id: str) -> UserKeys:
        return UserKeys(self.bucket(self.bucket_of_user(user_id)), user_id)

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
    def flusher_lock(self) -> str:
        return f"{self.tag}:flusher-lock"


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

    def idempotency(self, key: str) -> str:
        return f"{self.base}:idem:{key}"


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
        return f"{self.base}:cb"

    @property
    def meta(self) -> str:
        """The job's item descriptions (JSON), written once at reserve and never by Lua logic."""
        return f"{self.base}:meta"

    def user(self, user_id: str) -> UserKeys:
        return UserKeys(self.bucket, user_id)
