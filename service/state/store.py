"""The typed face of the Lua scripts: one method per atomic operation.

Every method builds its keys through `service.state.keys`, runs one script with its keys and
arguments by name (`service.state.calls` declares each script's), maps the script's return
code through `service.state.codes` and raises the matching typed error on a refusal.
Methods are safe to retry: every script is idempotent by an operation id.

Core is the job lifecycle here, over the calls about users and credits
(service.state.users), the flusher's (service.state.flushing) and the reads
(service.state.reads).
"""

from __future__ import annotations

from typing import Any

from service.state.apikeys import ApiKeyCalls, KeySpend
from service.state.base import now_ms
from service.state.codes import ERRORS, Code
from service.state.flushing import FlushCalls
from service.state.fsm import TERMINAL, JobState
from service.state.keys import JobKeys, UserKeys
from service.state.replies import (
    BatchProgress,
    ItemReport,
    JobProgress,
    item_flag,
    job_progress,
)
from service.state.users import UserCalls, op_digest

__all__ = ["Core", "ItemReport", "now_ms", "op_digest"]


def _report_keys(job: JobKeys, user: UserKeys) -> dict[str, str]:
    """The keys item_result and items_result share (their specs add the job's ring)."""
    b = job.bucket
    return {"job": job.base, "items": job.items, "callbacks": job.callbacks,
            "callback_set": job.callback_set, "user": user.base, "active": user.active,
            "holds": b.holds, "leases": b.leases, "queued": b.queued, "flush": b.flush,
            "ledger": b.ledger, "webhook_log": job.webhooks, "webhooks": b.webhooks,
            "counters": b.counters, "key_spend": user.key_spend, "grants": user.grants,
            "grant_expiry": b.grant_expiry}


def _finish_keys(job: JobKeys, user: UserKeys) -> dict[str, str]:
    """settle's and cancel's keys (lua/includes/finish_job.lua)."""
    b = job.bucket
    return {"job": job.base, "user": user.base, "active": user.active, "holds": b.holds,
            "leases": b.leases, "queued": b.queued, "flush": b.flush, "ledger": b.ledger,
            "webhook_log": job.webhooks, "webhooks": b.webhooks, "counters": b.counters,
            "key_spend": user.key_spend, "grants": user.grants, "grant_expiry": b.grant_expiry}


class Core(UserCalls, ApiKeyCalls, FlushCalls):
    """Holds the client and the scripts; share one per process."""

    async def ping(self) -> str | None:
        """Runs ping.lua; returns the value of the `<prefix>:ping` key it reads (None if unset)."""
        value: str | None = await self.run_script("ping", keys={"key": f"{self.keys.prefix}:ping"})
        return value

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
        key: KeySpend | None = None,
        priority: str = "",
        start_deadline_ms: int | None = None,
        min_price: int | None = None,
    ) -> tuple[Code, str]:
        """Returns (OK, job_id) or (ALREADY, the existing job id). `uploaded`: the job
        starts `uploaded` (a retry, on inputs already stored). `min_price`: the cheapest
        model's price (credits.exhausted, lua/includes/alerts.lua)."""
        user = self.keys.user(user_id)
        if self.keys.bucket_of_job(job_id) != self.keys.bucket_of_user(user_id):
            # Every later call finds the job by the bucket in its id: a job stored under
            # another bucket would hold credits that nothing could ever release.
            raise ERRORS[Code.BAD_ARGUMENT](f"reserve: job id {job_id!r} is not from {user_id!r}")
        job = JobKeys(user.bucket, job_id)
        now = at_ms if at_ms is not None else self._now()
        # The optional arguments, only those given (lua/reserve.lua: ARGV[8]).
        opts: dict[str, str | int | bool] = {name: value for name, value in (
            ("rule_id", rule_id), ("model", model), ("webhook_url", webhook_url),
            ("webhook_events", ",".join(webhook_events)), ("params", params_json),
            ("bill_input_errors", bill_input_errors), ("retry_of", retry_of),
            ("uploaded", uploaded), ("priority", priority)) if value}
        if result_ttl_s is not None:
            opts["result_ttl_s"] = result_ttl_s
        if min_price is not None:
            opts["min_price"] = min_price
        hold_until = now + hold_ttl_ms
        if start_deadline_ms is not None:  # not started by then: canceled, reason deadline
            opts["start_deadline"] = start_deadline_ms
            hold_until = min(hold_until, start_deadline_ms)
        if idempotency_key:
            opts |= {"idempotent": True, "body_hash": body_hash,
                     "idempotency_ttl_ms": idempotency_ttl_ms}
        keys = {"user": user.base, "active": user.active, "jobs": user.jobs, "job": job.base,
                "meta": job.meta, "holds": user.bucket.holds,
                "idempotency": user.idempotency(idempotency_key or "-"),
                "ledger": user.bucket.ledger, "grants": user.grants,
                "grant_expiry": user.bucket.grant_expiry, "key_spend": user.key_spend,
                "alert_log": user.alert_log, "webhooks": user.bucket.webhooks}
        if key is not None:  # the job is made through an API key: counted against its cap
            opts |= key.reserve_opts(now)
        code, reply = await self.run_checked(
            "reserve",
            keys=keys,
            args={"job_id": job_id, "owner": user_id, "total": total, "price": price,
                  "now": now, "hold_until": hold_until, "meta_json": meta_json,
                  "opts": opts},
        )
        await self._use_bucket(self.keys.bucket_of_user(user_id))
        return code, str(reply["job_id"])

    async def transition(
        self, job_id: str, from_state: str, to_state: str, *, owner: str = "", lease_ms: int = 0
    ) -> JobProgress:
        job = self.job_keys(job_id)
        b = job.bucket
        now = self._now()
        reply = await self.run_script(
            "transition",
            keys={"job": job.base, "holds": b.holds, "leases": b.leases, "queued": b.queued,
                  "webhook_log": job.webhooks, "webhooks": b.webhooks},
            args={"job_id": job_id, "owner": owner, "from_state": from_state,
                  "to_state": to_state, "now": now, "lease_until": now + lease_ms},
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
        now = self._now()
        reply = await self.run_script(
            "item_result",
            keys=_report_keys(job, job.user(owner)),
            args={"job_id": job_id, "owner": owner, "callback_key": callback_key,
                  "index": index, "outcome": item_flag(ok, billable), "detail": detail,
                  "now": now, "lease_until": now + lease_ms, "flush_due": now + flush_delay_ms},
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
        now = self._now()
        entries: list[str | int] = []
        for report in reports:
            entries += [report.callback_key, report.index, report.flag, report.detail]
        code, reply = await self.run_checked(
            "items_result",
            keys=_report_keys(job, job.user(owner)),
            args={"job_id": job_id, "owner": owner, "now": now, "lease_until": now + lease_ms,
                  "flush_due": now + flush_delay_ms, "count": len(reports),
                  "entries": entries},
        )
        if reply["state"] in TERMINAL:
            await self._mark_job_due(job_id, now)
        return BatchProgress(code, reply["state"], int(reply["done"]), int(reply["failed"]),
                             int(reply["total"]), int(reply.get("counted", 0)),
                             int(reply.get("duplicates", 0)))

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
        now = self._now()
        reply = await self.run_script(
            "settle",
            keys=_finish_keys(job, job.user(owner)),
            args={"job_id": job_id, "owner": owner, "to_state": to_state,
                  "from_states": ",".join(from_states), "reason": reason, "now": now,
                  "flush_due": now + flush_delay_ms},
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
        now = self._now()
        reply: list[Any] = await self.run_script(
            "cancel",
            keys=_finish_keys(job, job.user(owner)),
            args={"job_id": job_id, "owner": owner, "reason": reason, "now": now,
                  "flush_due": now + flush_delay_ms, "from_states": ",".join(from_states)},
        )
        progress = job_progress(reply, "cancel")
        await self._mark_job_due(job_id, now)  # ledger entries wait
        return progress

    async def renew_lease(self, job_id: str, owner: str, lease_ms: int) -> Code:
        job = self.job_keys(job_id)
        code, _ = await self.run_checked(
            "renew_lease", keys={"job": job.base, "leases": job.bucket.leases},
            args={"job_id": job_id, "owner": owner, "lease_until": self._now() + lease_ms})
        return code
