"""Moving users' keys to a new bucket count (`tollgate rebucket`), with the API stopped.

A user's keys live in bucket `crc32(user_id) % TOLLGATE_BUCKETS`, so a new count puts most
users in another bucket: their hash, active and rules sets, jobs zset, ops hash, webhook
secret, idempotency keys, grants and account webhook log move there (and the members of
the bucket's grant expiry index and the due entries of the log's deliveries, which name
them). Job ids carry their bucket (`<ulid>-<bucket>`) and
keep it: every key named by a job id (the job hash, items, callbacks, meta, webhook log)
stays where it is and stays addressable, and a finished job in SQL history is read by its
id as before. Only growing is allowed, so every old job id stays below the new count.

Refused while any job is live or not yet flushed (a bucket's holds, leases, queued or flush
zset is not empty): the user's active set and jobs zset would then hold jobs in another
bucket. Let the live jobs end, stop the API and the workers, let `tollgate flusher --once`
flush, then rebucket.
Ledger entries waiting in an old bucket's list stay there; the flusher finds them (its
first pass reads every bucket).

Each key is copied by its type (hash, set, zset, string, with its TTL) to the new name,
then the old one is deleted: a run that died half way is finished by running it again.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from service.state.keys import KeySpace

# The bucket-level zsets that must be empty: a job in them still points at its user.
LIVE_INDEXES = ("holds", "leases", "queued", "flush")


class RebucketRefused(Exception):
    """The move cannot start; the message says why and what to do."""


@dataclass(slots=True)
class RebucketReport:
    users: int = 0  # users found
    moved_users: int = 0  # users whose bucket changed
    moved_keys: int = 0
    buckets_used: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class UserKey:
    key: str
    bucket: int
    user_id: str
    suffix: str  # '' for the user hash, else ':active', ':idem:<hex>', ...


def parse_user_key(prefix: str, key: str) -> UserKey | None:
    """`<prefix>:{<b>}:user:<uid>[:<rest>]` (user ids hold no ':'), else None."""
    head = f"{prefix}:{{"
    if not key.startswith(head):
        return None
    bucket, sep, rest = key[len(head):].partition("}:user:")
    if not sep or not bucket.isdigit() or not rest:
        return None
    user_id, colon, suffix = rest.partition(":")
    return UserKey(key, int(bucket), user_id, colon + suffix)


async def live_work(client: Any, keys: KeySpace) -> dict[str, int]:
    """Jobs per live index, summed over every bucket of `keys` (one pipeline)."""
    async with client.pipeline(transaction=False) as pipe:
        for bucket in range(keys.buckets):
            for index in LIVE_INDEXES:
                pipe.zcard(getattr(keys.bucket(bucket), index))
        counts = await pipe.execute()
    totals = dict.fromkeys(LIVE_INDEXES, 0)
    for i, count in enumerate(counts):
        totals[LIVE_INDEXES[i % len(LIVE_INDEXES)]] += int(count)
    return totals


async def _copy(client: Any, source: str, target: str) -> bool:
    """Copies one key by its type with its TTL; False if it vanished."""
    kind = await client.type(source)
    await client.delete(target)  # a partial copy from a run that died
    if kind == "hash":
        value = await client.hgetall(source)
        if value:
            await client.hset(target, mapping=value)
    elif kind == "set":
        members = await client.smembers(source)
        if members:
            await client.sadd(target, *members)
    elif kind == "zset":
        scored = await client.zrange(source, 0, -1, withscores=True)
        if scored:
            await client.zadd(target, dict(scored))
    elif kind == "string":
        await client.set(target, await client.get(source))
    elif kind == "none":
        return False
    else:
        raise RebucketRefused(f"{source}: unexpected type {kind}")
    ttl = await client.pttl(source)
    if ttl > 0:
        await client.pexpire(target, ttl)
    return True


async def _move_account_deliveries(client: Any, old: KeySpace, new: KeySpace) -> None:
    """An account event's delivery id names its user ('acct.<ms>-<n>.<user id>',
    lua/includes/alerts.lua), whose log moved with the user's keys: its entry in the old
    bucket's due set goes to the new bucket's, where the attempt's outcome is recorded."""
    for bucket in range(old.buckets):
        source = old.bucket(bucket).webhooks
        async for member, score in client.zscan_iter(source, match="acct.*"):
            target = new.user(member.split(".", 2)[2]).bucket.webhooks
            if target != source:
                await client.zadd(target, {member: score})
                await client.zrem(source, member)


async def _move_grant_expiries(client: Any, old: KeySpace, new: KeySpace,
                               movers: list[str]) -> None:
    """A moved user's grants that expire: their members of the bucket's grant expiry and
    grant warning indexes move with them (the grants hash moved as a user key)."""
    for user_id in movers:
        target = new.user(user_id)
        source = old.user(user_id)
        for grant_id, raw in (await client.hgetall(target.grants)).items():
            grant_id = grant_id.decode() if isinstance(grant_id, bytes) else str(grant_id)
            expires = int(json.loads(raw)["e"])
            member = f"{user_id}:{grant_id}"
            if expires > 0:
                await client.zadd(target.bucket.grant_expiry, {member: expires})
            await client.zrem(source.bucket.grant_expiry, member)
            # Its credits.expiring, if not sent yet (lua/grants_warn.lua removes the member).
            warn_at = await client.zscore(source.bucket.grant_warn, member)
            if warn_at is not None:
                await client.zadd(target.bucket.grant_warn, {member: warn_at})
                await client.zrem(source.bucket.grant_warn, member)


async def rebucket(client: Any, prefix: str, old_buckets: int, new_buckets: int, *,
                   dry_run: bool = False) -> RebucketReport:
    """Moves every user's keys from bucket `crc32 % old_buckets` to `crc32 % new_buckets`."""
    if new_buckets < old_buckets:
        raise RebucketRefused(
            f"{old_buckets} -> {new_buckets}: only growing is supported (a job id in history "
            f"ending in a bucket >= {new_buckets} would no longer be found)")
    old, new = KeySpace(prefix, old_buckets), KeySpace(prefix, new_buckets)
    live = await live_work(client, old)
    if any(live.values()):
        waiting = ", ".join(f"{count} {index}" for index, count in live.items() if count)
        raise RebucketRefused(
            f"jobs are live or not yet flushed ({waiting}): stop the API and the workers, "
            f"run `tollgate flusher --once` until they are flushed, then run this again")
    found: list[UserKey] = []
    async for key in client.scan_iter(match=f"{prefix}:{{*}}:user:*", count=1000):
        parsed = parse_user_key(prefix, key)
        if parsed is not None:
            found.append(parsed)
    report = RebucketReport(users=len({k.user_id for k in found}))
    movers: set[str] = set()
    for user_key in found:
        crc = zlib.crc32(user_key.user_id.encode())
        target_bucket = crc % new_buckets
        report.buckets_used.add(target_bucket)
        if user_key.bucket == target_bucket:
            continue  # already there (moved by an earlier run, or the same bucket)
        if user_key.bucket != crc % old_buckets:
            raise RebucketRefused(
                f"{user_key.key} is in neither bucket {crc % old_buckets} ({old_buckets} "
                f"buckets) nor {target_bucket}: is TOLLGATE_BUCKETS the count the data has?")
        movers.add(user_key.user_id)
        target = new.user(user_key.user_id).base + user_key.suffix
        if not dry_run and await _copy(client, user_key.key, target):
            await client.delete(user_key.key)
        report.moved_keys += 1
    report.moved_users = len(movers)
    if not dry_run:
        await _move_grant_expiries(client, old, new, sorted(movers))
        await _move_account_deliveries(client, old, new)
    if report.buckets_used and not dry_run:  # metrics and the flusher's safety net read it
        await client.sadd(new.buckets_in_use, *sorted(report.buckets_used))
    return report
