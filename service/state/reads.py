"""Core's reads: the hashes and indexes the scripts write, as records (service.state.records).

A base class of `service.state.store.Core` only to keep each module short; nothing else
subclasses it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from service.state.codes import ERRORS, Code
from service.state.fsm import JobState
from service.state.keys import JobKeys, KeySpace
from service.state.records import JOB_STATE, JobRecord, LedgerEntry, UserRecord
from service.state.replies import MoneySnapshot


class StateReads:
    client: Any
    keys: KeySpace
    # The client itself, or an AutoPipeline over it (see Core.__init__).
    runner: Any

    def job_keys(self, job_id: str) -> JobKeys:
        keys = self.keys.job(job_id)
        if keys is None:
            raise ERRORS[Code.NOT_FOUND](f"no job {job_id!r}")
        return keys

    async def _read(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Read commands in one round trip: in the batch other requests are sending when
        auto-pipelined, else in one pipeline."""
        if self.runner is not self.client:
            return list(await asyncio.gather(*(self.runner.execute_command(*command)
                                               for command in commands)))
        async with self.client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute())

    async def user_record(self, user_id: str) -> dict[str, str]:
        """The raw hash, as the scripts wrote it (tests assert on it); code reads records."""
        record: dict[str, str] = await self.runner.hgetall(self.keys.user(user_id).base)
        return record

    async def job_record(self, job_id: str) -> dict[str, str]:
        keys = self.keys.job(job_id)
        if keys is None:
            return {}
        record: dict[str, str] = await self.runner.hgetall(keys.base)
        return record

    async def user_usage(self, user_id: str) -> tuple[UserRecord | None, int, int]:
        """The user, its live jobs and its rule slots in use, in one round trip."""
        user = self.keys.user(user_id)
        record, active, rules = await self._read(
            ("HGETALL", user.base), ("SCARD", user.active), ("SCARD", user.rules))
        return UserRecord.from_redis(record), int(active), int(rules)

    async def holds_rule_slot(self, user_id: str, rule_id: str) -> bool:
        rules = self.keys.user(user_id).rules
        return bool((await self._read(("SISMEMBER", rules, rule_id)))[0])

    async def job(self, job_id: str) -> JobRecord | None:
        """The job without its items; None when there is no such job in Redis."""
        return JobRecord.from_redis(await self.job_record(job_id))

    async def job_state(self, job_id: str) -> JobState | None:
        """Only the job's state (one HGET, not the whole hash); None when there is no such
        job in Redis."""
        keys = self.keys.job(job_id)
        if keys is None:
            return None
        state: str | None = await self.runner.execute_command("HGET", keys.base, JOB_STATE)
        return None if state is None else JobState(state)

    async def jobs(self, job_ids: list[str]) -> list[JobRecord | None]:
        """Jobs of one bucket (or one user) without their items, in one round trip."""
        hashes = await self._read(*(("HGETALL", self.job_keys(job_id).base)
                                    for job_id in job_ids)) if job_ids else []
        return [JobRecord.from_redis(job) for job in hashes]

    async def job_snapshot(self, job_id: str) -> JobRecord | None:
        """The job with its items, in one round trip."""
        return (await self.job_snapshots([job_id]))[0]

    async def job_snapshots(self, job_ids: list[str]) -> list[JobRecord | None]:
        """Jobs of one bucket with their items, in one round trip (the flusher's batch)."""
        return [JobRecord.from_redis(*raw) for raw in await self.raw_job_snapshots(job_ids)]

    async def raw_job_snapshots(
        self, job_ids: list[str]
    ) -> list[tuple[dict[str, str], dict[str, str], str | None]]:
        """(job hash, items hash, meta JSON) of jobs of one bucket as Redis holds them, in one
        round trip: the flusher converts each on its own, so one bad hash stops no batch."""
        commands: list[tuple[Any, ...]] = []
        for job_id in job_ids:
            keys = self.job_keys(job_id)
            commands += [("HGETALL", keys.base), ("HGETALL", keys.items), ("GET", keys.meta)]
        replies = await self._read(*commands) if commands else []
        return [(replies[i], replies[i + 1], replies[i + 2]) for i in range(0, len(replies), 3)]

    async def live_jobs(self, user_id: str) -> list[JobRecord]:
        """The user's jobs still in Redis (live, or awaiting their flush), newest first."""
        index = self.keys.user(user_id).jobs
        job_ids: list[str] = (await self._read(("ZREVRANGE", index, 0, -1)))[0]
        return [job for job in await self.jobs(job_ids) if job is not None]

    async def drop_index_entry(self, bucket: int, index: str, job_id: str) -> None:
        """Removes a job that is gone from a bucket's 'holds' or 'leases' index."""
        await self.client.zrem(getattr(self.keys.bucket(bucket), index), job_id)

    async def ledger_head(self, bucket: int, limit: int) -> list[str]:
        """The oldest raw ledger entries of a bucket; ledger_ack trims them once stored."""
        entries: list[str] = await self.client.lrange(self.keys.bucket(bucket).ledger, 0,
                                                      limit - 1)
        return entries

    async def close(self) -> None:
        await self.client.aclose()

    async def counter_totals(self, fields: list[str]) -> dict[str, int]:
        """Business counters summed over every bucket, in one pipeline."""
        async with self.client.pipeline(transaction=False) as pipe:
            for bucket in range(self.keys.buckets):
                pipe.hmget(self.keys.bucket(bucket).counters, fields)
            replies = await pipe.execute()
        totals = dict.fromkeys(fields, 0)
        for values in replies:
            for name, value in zip(fields, values, strict=True):
                totals[name] += int(value or 0)
        return totals

    async def user_exists(self, user_id: str) -> bool:
        return bool(await self.client.exists(self.keys.user(user_id).base))

    async def idempotent_job(self, user_id: str, idempotency_key: str) -> tuple[str, str] | None:
        """(job id, body hash) that reserve stored under this Idempotency-Key, or None."""
        key = self.keys.user(user_id).idempotency(idempotency_key)
        job_id, body_hash = await self.runner.execute_command("HMGET", key, "job_id", "body_hash")
        return None if job_id is None else (str(job_id), str(body_hash or ""))

    async def known_user_ids(self) -> list[str]:
        """Every user Redis holds a record of, by SCAN: for operators' tools, not requests."""
        found: set[str] = set()
        async for key in self.client.scan_iter(match=f"{self.keys.prefix}:*:user:*",
                                               count=1000):
            user_id = key.partition(":user:")[2]
            if user_id and ":" not in user_id:  # not one of the user's other keys
                found.add(user_id)
        return sorted(found)

    async def money_snapshot(self, user_id: str) -> MoneySnapshot:
        """The user record, its job index and its bucket's ledger list in one MULTI (one hash
        slot: they share the bucket tag), then the jobs of that index."""
        user = self.keys.user(user_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(user.base)
            pipe.zrange(user.jobs, 0, -1)
            pipe.lrange(user.bucket.ledger, 0, -1)
            record, job_ids, raw_entries = await pipe.execute()
        jobs = await self.jobs(list(job_ids))
        entries = (LedgerEntry.from_json(raw) for raw in raw_entries)
        return MoneySnapshot(UserRecord.from_redis(record), [job for job in jobs if job],
                             [entry for entry in entries if entry.user_id == user_id])
