"""Core's calls for the flusher: claiming a bucket's due work, dropping what reached SQL,
and counting the records SQL refused. A base of `service.state.store.Core`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from service.state.base import CoreBase
from service.state.codes import Code
from service.state.replies import DueWork, FlushAttempt

ENDED_LOGS_KEPT = 100_000


def _ended(raw: str) -> bool:
    try:
        record = json.loads(raw)
    except ValueError:
        return False
    return isinstance(record, dict) and bool(record.get("delivered_at")
                                             or record.get("gave_up_at"))


@dataclass(frozen=True, slots=True)
class FlushRead:
    ledger_head: list[str]
    retries_due: list[str]
    snapshots: list[tuple[dict[str, str], dict[str, str], str | None]]  # hash, items, meta
    webhook_logs: list[dict[str, str]]


def _pairs(flat: list[Any]) -> dict[str, str]:
    """A hash from HGETALL's flat field/value list, as a script returns it."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class FlushCalls(CoreBase):
    async def claim_due(
        self, bucket: int, *, limit: int, claim_ms: int, requeue_after_ms: int
    ) -> DueWork:
        b = self.keys.bucket(bucket)
        now = self._now()
        reply = await self.run_named(
            "claim_due",
            keys={"holds": b.holds, "leases": b.leases, "queued": b.queued, "flush": b.flush},
            args={"now": now, "limit": limit, "claim_ms": claim_ms,
                  "requeue_before": now - requeue_after_ms},
        )
        return DueWork(list(reply["expired_holds"]), list(reply["expired_leases"]),
                       list(reply["stale_queued"]), list(reply["due_flushes"]))

    def _ended_logs(self) -> dict[str, str]:
        """Job id -> its webhook log's delivery ids, each ended, as `webhook_logs` (or
        `flush_read`) last read them for the flush (popped by `flush_done`; bounded, oldest
        dropped first)."""
        memo: dict[str, str] | None = self.__dict__.get("_ended_logs_memo")
        if memo is None:
            memo = self.__dict__["_ended_logs_memo"] = {}
        return memo

    async def flush_done(self, job_id: str, owner: str) -> Code:
        """Deletes the flushed job's records, and its webhook log when every delivery in it
        had ended as the flush read it (SQL has it whole then: Redis need not keep it for
        TOLLGATE_WEBHOOK_LOG_TTL, which an abandoned job's log cost for nothing)."""
        job = self.job_keys(job_id)
        code, _ = await self.run_checked(
            "flush_done",
            keys={"job": job.base, "items": job.items, "callbacks": job.callbacks,
                  "meta": job.meta, "flush": job.bucket.flush,
                  "jobs": job.user(owner).jobs, "callback_set": job.callback_set,
                  "webhook_log": job.webhooks},
            args={"job_id": job_id,
                  "flushed_deliveries": self._ended_logs().pop(job_id, "")},
        )
        return code

    async def flush_read(self, bucket: int, job_ids: list[str], ledger_limit: int
                         ) -> FlushRead:
        """What a visit of the bucket writes to SQL, in one script (flush_read.lua): the head
        of its ledger, its refused entries due again, and each job's (hash, items, meta,
        webhook log), as raw_job_snapshots and webhook_logs give them."""
        b = self.keys.bucket(bucket)
        keys = [key for job_id in job_ids
                for job in (self.job_keys(job_id),)
                for key in (job.base, job.items, job.meta, job.webhooks)]
        reply = await self.run_named(
            "flush_read", keys={"ledger": b.ledger, "ledger_retry": b.ledger_retry,
                                "jobs": keys},
            args={"ledger_limit": ledger_limit, "now": self._now()})
        flat = reply["jobs"]
        snapshots = [(_pairs(flat[i]), _pairs(flat[i + 1]), flat[i + 2] or None)
                     for i in range(0, len(flat), 4)]
        logs = [_pairs(flat[i + 3]) for i in range(0, len(flat), 4)]
        self._note_ended(job_ids, logs)  # as webhook_logs does: flush_done reads it
        return FlushRead(list(reply["ledger_head"]), list(reply["retries_due"]), snapshots,
                         logs)

    async def mark_in_sql(self, job_ids: list[str]) -> int:
        """Notes on each finished job's hash (field JOB_IN_SQL) that its rows are in SQL;
        `job_ids` all of one bucket. Returns how many were marked."""
        if not job_ids:
            return 0
        marked = await self.run_script(
            "mark_in_sql", keys={"jobs": [self.job_keys(job_id).base for job_id in job_ids]},
            args={"at": self._now()})
        return int(marked)

    async def ledger_ack(self, bucket: int, count: int, first_entry: str) -> Code:
        code, _ = await self.run_checked(
            "ledger_ack", keys={"ledger": self.keys.bucket(bucket).ledger},
            args={"count": count, "first_entry": first_entry})
        return code

    async def flush_retry_later(
        self, bucket: int, kind: str, record_id: str, entry: str, *, attempts_allowed: int,
        delay_ms: int,
    ) -> FlushAttempt:
        """Counts a refused SQL write of a job (`entry` '') or ledger entry (`entry` as read
        from the ledger list) and schedules the next attempt unless this was the last."""
        b = self.keys.bucket(bucket)
        code, reply = await self.run_checked(
            "flush_retry_later",
            keys={"flush_attempts": b.flush_attempts, "flush": b.flush,
                  "ledger_retry": b.ledger_retry},
            args={"kind": kind, "record_id": record_id, "entry": entry, "now": self._now(),
                  "attempts_allowed": attempts_allowed, "delay_ms": delay_ms})
        return FlushAttempt(int(reply["attempts"]), int(reply["first_failed_ms"]),
                            code is Code.EXHAUSTED)

    async def flush_retry_end(
        self, bucket: int, kind: str, record_id: str, entry: str, *, set_aside: bool
    ) -> Code:
        """A refused record is done with (written, or set aside: counted as a failure)."""
        b = self.keys.bucket(bucket)
        code, _ = await self.run_checked(
            "flush_retry_end",
            keys={"flush_attempts": b.flush_attempts, "ledger_retry": b.ledger_retry,
                  "counters": b.counters},
            args={"kind": kind, "record_id": record_id, "entry": entry,
                  "set_aside": "1" if set_aside else "0"})
        return code

    async def forget_job_attempts(self, bucket: int, job_ids: list[str]) -> None:
        """Drops the attempt counts of flushed jobs (most have none: HDEL of absent fields)."""
        if job_ids:
            fields = [f"job:{job_id}{end}" for job_id in job_ids for end in ("", ":first")]
            # Through the runner: it joins the batch of the flush_done scripts sent with it.
            await self.runner.execute_command(
                "HDEL", self.keys.bucket(bucket).flush_attempts, *fields)

    async def jobs_present(self, job_ids: list[str]) -> set[str]:
        """Which of these jobs Redis still holds (a job hash exists), in one round trip."""
        known = [(job_id, keys.base) for job_id in job_ids
                 if (keys := self.keys.job(job_id)) is not None]
        if not known:
            return set()
        replies = await self._read(*(("EXISTS", key) for _, key in known))
        return {job_id for (job_id, _), there in zip(known, replies, strict=True) if there}

    async def ledger_retries_due(self, bucket: int, limit: int) -> list[str]:
        """Refused ledger entries whose next attempt is due, as read from the ledger list."""
        due: list[str] = await self.client.zrangebyscore(
            self.keys.bucket(bucket).ledger_retry, "-inf", self._now(), start=0, num=limit)
        return due

    async def webhook_logs(self, job_ids: list[str]) -> list[dict[str, str]]:
        """Each job's webhook delivery log (delivery id -> JSON record), in one round trip:
        the flusher moves it to SQL with the job."""
        if not job_ids:
            return []
        replies = await self._read(*(("HGETALL", self.job_keys(job_id).webhooks)
                                     for job_id in job_ids))
        logs = [dict(reply or {}) for reply in replies]
        self._note_ended(job_ids, logs)
        return logs

    def _note_ended(self, job_ids: list[str], logs: list[dict[str, str]]) -> None:
        """Remembers the logs read for a flush whose every delivery had ended (_ended_logs)."""
        memo = self._ended_logs()
        for job_id, log in zip(job_ids, logs, strict=True):
            memo.pop(job_id, None)
            if log and all(_ended(raw) for raw in log.values()):
                memo[job_id] = ",".join(log)
        while len(memo) > ENDED_LOGS_KEPT:
            del memo[next(iter(memo))]
