"""The typed face of the Lua scripts: one method per atomic operation.

Every method builds its keys through `service.state.keys`, runs one script, maps the script's
return code through `service.state.codes` and raises the matching typed error on a refusal.
Methods are safe to retry: every script is idempotent by an operation id.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from service.state.autopipeline import AutoPipeline
from service.state.codes import ERRORS, Code
from service.state.fsm import TERMINAL, JobState
from service.state.keys import JobKeys, KeySpace, UserKeys
from service.state.marks import DueMarks
from service.state.plans import Plan
from service.state.reads import StateReads
from service.state.replies import (
    Balance,
    BatchProgress,
    DueWork,
    FlushAttempt,
    ItemReport,
    JobProgress,
    SlotUse,
    check_reply,
    item_flag,
    job_progress,
)
from service.state.scripts import Script, load_scripts

MARK_AGAIN_S = 600  # how often a process adds a bucket it uses to `tg:buckets` again


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def op_digest(op_id: str) -> str:
    """An admin operation id (an Idempotency-Key, up to 200 characters) in a fixed size: it
    names the op in the user's ops hash and ends the ledger id `grant:<uid>:<digest>`, which
    must fit credit_ledger.id for the longest user id."""
    return hashlib.sha256(op_id.encode()).hexdigest()[:32]


class Core(StateReads):
    """Holds the client and the scripts; share one per process. The reads are in StateReads."""

    def __init__(self, client: Any, keys: KeySpace, *, autopipeline: bool = False) -> None:
        self.client = client
        self.keys = keys
        self.scripts: dict[str, Script] = load_scripts()
        # Scripts and single-key reads go through `runner`: the client itself, or an
        # AutoPipeline over it that batches what concurrent requests send in one loop turn.
        self.runner: Any = AutoPipeline(client) if autopipeline else client
        self._buckets_marked: dict[int, float] = {}  # bucket -> when this process marked it
        self.marks = DueMarks(self.runner, keys)

    async def close(self) -> None:
        await self.marks.sent()  # the due-index marks of the last calls
        await super().close()

    async def _use_bucket(self, bucket: int) -> None:
        """Adds the bucket to the set a metrics scrape reads, after a script there that
        provisioned, funded or reserved succeeded: a refused call writes nothing. Once per
        process every 10 minutes (SADD is idempotent, the set only grows): a crash between
        the script and the SADD, or a Redis that lost the set, is mended by the next call."""
        if time.monotonic() - self._buckets_marked.get(bucket, -MARK_AGAIN_S) >= MARK_AGAIN_S:
            await self.runner.execute_command("SADD", self.keys.buckets_in_use, bucket)
            self._buckets_marked[bucket] = time.monotonic()
        await self._mark_due(bucket, now_ms())  # its ledger entry waits for the flusher

    async def _mark_job_due(self, job_id: str, due_ms: int) -> None:
        bucket = self.keys.bucket_of_job(job_id)
        if bucket is not None:  # it is: job_keys checked the id before the script ran
            await self._mark_due(bucket, due_ms)

    async def _mark_due(self, bucket: int, due_ms: int) -> None:
        """Tells the flusher's due index (service/state/due.py) that the bucket has work due
        by `due_ms`, after the script that made it: the index lives in slots of its own,
        which a bucket's script may not write. ZADD LT never postpones an earlier mark. A
        crash between the script and this call is mended by the flusher's safety net.
        Auto-pipelined, it goes with the other marks of this loop turn, unawaited
        (service/state/marks.py); otherwise (a Cluster, fakeredis) a ZADD of its own."""
        if self.runner is self.client:
            await self.client.execute_command("ZADD", self.keys.due_index(bucket), "LT", due_ms,
                                              bucket)
        else:
            self.marks.mark(bucket, due_ms)

    async def _run(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        return await self.scripts[name](self.runner, keys, args)

    def _finish_keys(self, job: JobKeys, user: UserKeys) -> list[str]:
        b = job.bucket
        return [job.base, user.base, user.active, b.holds, b.leases, b.queued, b.flush, b.ledger,
                job.webhooks, b.webhooks, b.counters]

    async def ping(self) -> str | None:
        """Runs ping.lua; returns the value of the `<prefix>:ping` key it reads (None if unset)."""
        value: str | None = await self._run("ping", [f"{self.keys.prefix}:ping"], [])
        return value

    async def ensure_user(self, user_id: str, plan: Plan, credits: int) -> bool:
        """Provision a user once, its signup entry in the Redis ledger; True when this call
        created it."""
        user = self.keys.user(user_id)
        reply = await self._run(
            "ensure_user",
            [user.base, user.bucket.ledger, user.bucket.counters],
            [user_id, plan.name, credits, plan.concurrency, plan.rule_slots, now_ms(),
             0, credits, "1"],
        )
        code = check_reply(reply, "ensure_user")
        await self._use_bucket(self.keys.bucket_of_user(user_id))
        return code is Code.OK

    async def restore_user(
        self, user_id: str, plan: Plan, *, available: int, spent: int, granted: int,
        signup_credits: int = 0,
    ) -> bool:
        """Create the user record with a balance SQL already holds (its ledger entries are
        there, so none is pushed), unless Redis has it; True when this call created it."""
        user = self.keys.user(user_id)
        reply = await self._run(
            "ensure_user",
            [user.base, user.bucket.ledger, user.bucket.counters],
            [user_id, plan.name, available, plan.concurrency, plan.rule_slots, now_ms(),
             spent, granted, "0", signup_credits],
        )
        code = check_reply(reply, "ensure_user")
        await self._use_bucket(self.keys.bucket_of_user(user_id))
        return code is Code.OK

    async def reserve(
        self,
        *,
        job_id: str,
        user_id: str,
        total: int,
        price: int,
        hold_ttl_ms: int,
        meta_json: str,
        rule_id: str = "",
        model: str = "",
        webhook_url: str = "",
        webhook_events: tuple[str, ...] = (),
        params_json: str = "",
        bill_input_errors: bool = False,
        idempotency_key: str | None = None,
        body_hash: str = "",
        idempotency_ttl_ms: int = 86_400_000,
        at_ms: int | None = None,
        result_ttl_s: int | None = None,
        retry_of: str = "",
        uploaded: bool = False,
    ) -> tuple[Code, str]:
        """Returns (OK, job_id) or (ALREADY, the existing job id). `uploaded`: the job
        starts `uploaded` (a retry, on inputs already stored)."""
        user = self.keys.user(user_id)
        if self.keys.bucket_of_job(job_id) != self.keys.bucket_of_user(user_id):
            # Every later call finds the job by the bucket in its id: a job stored under
            # another bucket would hold credits that nothing could ever release.
            raise ERRORS[Code.BAD_ARGUMENT](f"reserve: job id {job_id!r} is not from {user_id!r}")
        job = JobKeys(user.bucket, job_id)
        now = at_ms if at_ms is not None else now_ms()
        idem = user.idempotency(idempotency_key or "-")
        reply = await self._run(
            "reserve",
            [user.base, user.active, user.jobs, job.base, job.meta, user.bucket.holds, idem,
             user.bucket.ledger],
            [
                job_id, user_id, total, price, now, now + hold_ttl_ms, meta_json,
                "1" if idempotency_key else "0", body_hash, idempotency_ttl_ms, rule_id,
                model, webhook_url, ",".join(webhook_events), params_json,
                "1" if bill_input_errors else "",
                "" if result_ttl_s is None else result_ttl_s, retry_of,
                JobState.UPLOADED if uploaded else "",
            ],
        )
        code = check_reply(reply, "reserve")
        await self._use_bucket(self.keys.bucket_of_user(user_id))
        return code, str(reply[1])

    async def webhook_logs(self, job_ids: list[str]) -> list[dict[str, str]]:
        """Each job's webhook delivery log (delivery id -> JSON record), in one round trip:
        the flusher moves it to SQL with the job."""
        if not job_ids:
            return []
        replies = await self._read(*(("HGETALL", self.job_keys(job_id).webhooks)
                                     for job_id in job_ids))
        return [dict(reply or {}) for reply in replies]

    async def transition(
        self, job_id: str, from_state: str, to_state: str, *, owner: str = "", lease_ms: int = 0
    ) -> JobProgress:
        job = self.job_keys(job_id)
        b = job.bucket
        now = now_ms()
        reply = await self._run(
            "transition",
            [job.base, b.holds, b.leases, b.queued, job.webhooks, b.webhooks],
            [job_id, owner, from_state, to_state, now, now + lease_ms],
        )
        progress = job_progress(reply, "transition")
        if to_state in (JobState.QUEUED, JobState.RUNNING):  # a requeue or lease deadline
            await self._mark_job_due(job_id, now + lease_ms if lease_ms else now)
        return progress

    async def item_result(
        self,
        job_id: str,
        owner: str,
        *,
        callback_key: str,
        index: int,
        ok: bool,
        detail: str,
        lease_ms: int,
        flush_delay_ms: int,
        billable: bool = False,
    ) -> JobProgress:
        job = self.job_keys(job_id)
        user = job.user(owner)
        b = job.bucket
        now = now_ms()
        reply = await self._run(
            "item_result",
            [job.base, job.items, job.callbacks, user.base, user.active,
             b.holds, b.leases, b.queued, b.flush, b.ledger, job.webhooks, b.webhooks,
             job.callback_set, b.counters],
            [job_id, owner, callback_key, index, item_flag(ok, billable), detail,
             now, now + lease_ms, now + flush_delay_ms],
        )
        progress = job_progress(reply, "item_result")
        if progress.state in TERMINAL:  # its ledger entries wait (a renewed lease only
            await self._mark_job_due(job_id, now)  # moves a deadline later: no mark)
        return progress

    async def items_result(
        self,
        job_id: str,
        owner: str,
        reports: list[ItemReport],
        *,
        lease_ms: int,
        flush_delay_ms: int,
    ) -> BatchProgress:
        """A batch of item reports in one script; each counts exactly once (item_result)."""
        job = self.job_keys(job_id)
        user = job.user(owner)
        b = job.bucket
        now = now_ms()
        entries: list[str | int] = []
        for report in reports:
            entries += [report.callback_key, report.index, report.flag, report.detail]
        reply = await self._run(
            "items_result",
            [job.base, job.items, job.callbacks, job.callback_set, user.base, user.active,
             b.holds, b.leases, b.queued, b.flush, b.ledger, job.webhooks, b.webhooks,
             b.counters],
            [job_id, owner, now, now + lease_ms, now + flush_delay_ms, len(reports), *entries],
        )
        code = check_reply(reply, "items_result")
        if reply[1] in TERMINAL:
            await self._mark_job_due(job_id, now)
        counted, duplicates = (int(reply[5]), int(reply[6])) if len(reply) >= 7 else (0, 0)
        return BatchProgress(code, reply[1], int(reply[2]), int(reply[3]), int(reply[4]),
                             counted, duplicates)

    async def settle(
        self,
        job_id: str,
        owner: str,
        to_state: str,
        *,
        from_states: tuple[str, ...] = (JobState.QUEUED, JobState.RUNNING),
        reason: str,
        flush_delay_ms: int,
    ) -> JobProgress:
        job = self.job_keys(job_id)
        now = now_ms()
        reply = await self._run(
            "settle",
            self._finish_keys(job, job.user(owner)),
            [job_id, owner, to_state, ",".join(from_states), reason, now, now + flush_delay_ms],
        )
        progress = job_progress(reply, "settle")
        await self._mark_job_due(job_id, now)  # ledger entries wait
        return progress

    async def cancel(
        self,
        job_id: str,
        owner: str,
        *,
        reason: str,
        flush_delay_ms: int,
        from_states: tuple[str, ...] = (),
    ) -> JobProgress:
        job = self.job_keys(job_id)
        now = now_ms()
        reply = await self._run(
            "cancel",
            self._finish_keys(job, job.user(owner)),
            [job_id, owner, reason, now, now + flush_delay_ms, ",".join(from_states)],
        )
        progress = job_progress(reply, "cancel")
        await self._mark_job_due(job_id, now)  # ledger entries wait
        return progress

    async def renew_lease(self, job_id: str, owner: str, lease_ms: int) -> Code:
        job = self.job_keys(job_id)
        reply = await self._run(
            "renew_lease", [job.base, job.bucket.leases], [job_id, owner, now_ms() + lease_ms]
        )
        return check_reply(reply, "renew_lease")

    async def rule_slot_take(self, user_id: str, rule_id: str) -> SlotUse:
        user = self.keys.user(user_id)
        reply = await self._run("rule_slot_take", [user.base, user.rules], [rule_id])
        code = check_reply(reply, "rule_slot_take")
        return SlotUse(code, int(reply[1]), int(reply[2]))

    async def rule_slot_release(self, user_id: str, rule_id: str) -> Code:
        user = self.keys.user(user_id)
        reply = await self._run("rule_slot_release", [user.rules], [rule_id])
        return check_reply(reply, "rule_slot_release")

    async def grant(self, user_id: str, op_id: str, amount: int, reason: str) -> Balance:
        user = self.keys.user(user_id)
        reply = await self._run(
            "grant",
            [user.base, user.ops, user.bucket.ledger, user.bucket.counters],
            [user_id, op_digest(op_id), amount, reason, now_ms()],
        )
        code = check_reply(reply, "grant")
        await self._use_bucket(self.keys.bucket_of_user(user_id))
        return Balance(code, *(int(v) for v in reply[1:5]))

    async def set_plan(self, user_id: str, op_id: str, plan: Plan) -> Code:
        user = self.keys.user(user_id)
        reply = await self._run(
            "set_plan",
            [user.base, user.ops],
            [op_digest(op_id), plan.name, plan.concurrency, plan.rule_slots],
        )
        return check_reply(reply, "set_plan")

    async def claim_due(
        self, bucket: int, *, limit: int, claim_ms: int, requeue_after_ms: int
    ) -> DueWork:
        b = self.keys.bucket(bucket)
        now = now_ms()
        reply = await self._run(
            "claim_due",
            [b.holds, b.leases, b.queued, b.flush],
            [now, limit, claim_ms, now - requeue_after_ms],
        )
        return DueWork(*(list(part) for part in reply))

    async def flush_done(self, job_id: str, owner: str) -> Code:
        job = self.job_keys(job_id)
        user = job.user(owner)
        reply = await self._run(
            "flush_done",
            [job.base, job.items, job.callbacks, job.meta, job.bucket.flush, user.jobs,
             job.callback_set],
            [job_id],
        )
        return check_reply(reply, "flush_done")

    async def ledger_ack(self, bucket: int, count: int, first_entry: str) -> Code:
        ledger = self.keys.bucket(bucket).ledger
        reply = await self._run("ledger_ack", [ledger], [count, first_entry])
        return check_reply(reply, "ledger_ack")

    async def flush_retry_later(
        self, bucket: int, kind: str, record_id: str, entry: str, *, attempts_allowed: int,
        delay_ms: int,
    ) -> FlushAttempt:
        """Counts a refused SQL write of a job (`entry` '') or ledger entry (`entry` as read
        from the ledger list) and schedules the next attempt unless this was the last."""
        b = self.keys.bucket(bucket)
        reply = await self._run(
            "flush_retry_later", [b.flush_attempts, b.flush, b.ledger_retry],
            [kind, record_id, entry, now_ms(), attempts_allowed, delay_ms])
        code = check_reply(reply, "flush_retry_later")
        return FlushAttempt(int(reply[1]), int(reply[2]), code is Code.EXHAUSTED)

    async def flush_retry_end(
        self, bucket: int, kind: str, record_id: str, entry: str, *, set_aside: bool
    ) -> Code:
        """A refused record is done with (written, or set aside: counted as a failure)."""
        b = self.keys.bucket(bucket)
        reply = await self._run(
            "flush_retry_end", [b.flush_attempts, b.ledger_retry, b.counters],
            [kind, record_id, entry, "1" if set_aside else "0"])
        return check_reply(reply, "flush_retry_end")

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
            self.keys.bucket(bucket).ledger_retry, "-inf", now_ms(), start=0, num=limit)
        return due
