"""The typed face of the Lua scripts: one method per atomic operation.

Every method builds its keys through `service.state.keys`, runs one script, maps the script's
return code through `service.state.codes` and raises the matching typed error on a refusal.
Methods are safe to retry: every script is idempotent by an operation id.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from service.errors import TollgateError
from service.state.autopipeline import AutoPipeline
from service.state.codes import ERRORS, SUCCESS, Code
from service.state.keys import JobKeys, KeySpace, UserKeys
from service.state.plans import Plan
from service.state.scripts import Script, load_scripts

LIVE_STATES = ("created", "uploaded", "queued", "running")
TERMINAL_STATES = ("done", "failed", "canceled")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class JobProgress:
    code: Code
    state: str
    done: int
    failed: int
    total: int
    charged: int | None = None
    refunded: int | None = None


@dataclass(frozen=True, slots=True)
class Balance:
    code: Code
    available: int
    reserved: int
    spent: int
    granted: int


@dataclass(frozen=True, slots=True)
class SlotUse:
    code: Code
    used: int
    limit: int


@dataclass(frozen=True, slots=True)
class DueWork:
    expired_holds: list[str]
    expired_leases: list[str]
    stale_queued: list[str]
    due_flushes: list[str]


def _check(reply: list[Any], script: str) -> Code:
    code = Code(reply[0])
    if code in SUCCESS:
        return code
    error: type[TollgateError] = ERRORS[code]
    detail = f"{script}: {code.value}" + (f" ({reply[1]})" if len(reply) > 1 else "")
    extra = {"job_status": reply[1]} if code is Code.INVALID_TRANSITION and len(reply) > 1 else {}
    raise error(detail, reply=reply[1:], **extra)


def _progress(reply: list[Any], script: str) -> JobProgress:
    code = _check(reply, script)
    extra = [int(v) for v in reply[5:7]] if len(reply) >= 7 else [None, None]
    return JobProgress(code, reply[1], int(reply[2]), int(reply[3]), int(reply[4]), *extra)


class Core:
    """Holds the client and the scripts; share one per process."""

    def __init__(self, client: Any, keys: KeySpace, *, autopipeline: bool = False) -> None:
        self.client = client
        self.keys = keys
        self.scripts: dict[str, Script] = load_scripts()
        # Scripts and single-key reads go through `runner`: the client itself, or an
        # AutoPipeline over it that batches what concurrent requests send in one loop turn.
        self.runner: Any = AutoPipeline(client) if autopipeline else client

    async def _run(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        return await self.scripts[name](self.runner, keys, args)

    def job_keys(self, job_id: str) -> JobKeys:
        keys = self.keys.job(job_id)
        if keys is None:
            raise ERRORS[Code.NOT_FOUND](f"no job {job_id!r}")
        return keys

    def _finish_keys(self, job: JobKeys, user: UserKeys) -> list[str]:
        b = job.bucket
        return [job.base, user.base, user.active, b.holds, b.leases, b.queued, b.flush, b.ledger]

    async def ping(self) -> None:
        await self._run("ping", [f"{self.keys.prefix}:ping"], [])

    async def ensure_user(self, user_id: str, plan: Plan, credits: int) -> bool:
        """Provision a user once; True when this call created it."""
        user = self.keys.user(user_id)
        reply = await self._run(
            "ensure_user",
            [user.base, user.bucket.ledger],
            [user_id, plan.name, credits, plan.concurrency, plan.rule_slots, now_ms()],
        )
        return _check(reply, "ensure_user") is Code.OK

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
        idempotency_key: str | None = None,
        body_hash: str = "",
        idempotency_ttl_ms: int = 86_400_000,
        at_ms: int | None = None,
    ) -> tuple[Code, str]:
        """Returns (OK, job_id) or (ALREADY, the existing job id)."""
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
            [user.base, user.active, user.jobs, job.base, job.meta, user.bucket.holds, idem],
            [
                job_id, user_id, total, price, now, now + hold_ttl_ms, meta_json,
                "1" if idempotency_key else "0", body_hash, idempotency_ttl_ms, rule_id,
            ],
        )
        return _check(reply, "reserve"), str(reply[1])

    async def transition(
        self, job_id: str, from_state: str, to_state: str, *, owner: str = "", lease_ms: int = 0
    ) -> JobProgress:
        job = self.job_keys(job_id)
        b = job.bucket
        now = now_ms()
        reply = await self._run(
            "transition",
            [job.base, b.holds, b.leases, b.queued],
            [job_id, owner, from_state, to_state, now, now + lease_ms],
        )
        return _progress(reply, "transition")

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
    ) -> JobProgress:
        job = self.job_keys(job_id)
        user = job.user(owner)
        b = job.bucket
        now = now_ms()
        reply = await self._run(
            "item_result",
            [job.base, job.items, job.callbacks, user.base, user.active,
             b.holds, b.leases, b.queued, b.flush, b.ledger],
            [job_id, owner, callback_key, index, "1" if ok else "0", detail,
             now, now + lease_ms, now + flush_delay_ms],
        )
        return _progress(reply, "item_result")

    async def settle(
        self,
        job_id: str,
        owner: str,
        to_state: str,
        *,
        from_states: tuple[str, ...] = ("queued", "running"),
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
        return _progress(reply, "settle")

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
        return _progress(reply, "cancel")

    async def renew_lease(self, job_id: str, owner: str, lease_ms: int) -> Code:
        job = self.job_keys(job_id)
        reply = await self._run(
            "renew_lease", [job.base, job.bucket.leases], [job_id, owner, now_ms() + lease_ms]
        )
        return _check(reply, "renew_lease")

    async def rule_slot_take(self, user_id: str, rule_id: str) -> SlotUse:
        user = self.keys.user(user_id)
        reply = await self._run("rule_slot_take", [user.base, user.rules], [rule_id])
        code = _check(reply, "rule_slot_take")
        return SlotUse(code, int(reply[1]), int(reply[2]))

    async def rule_slot_release(self, user_id: str, rule_id: str) -> Code:
        user = self.keys.user(user_id)
        reply = await self._run("rule_slot_release", [user.rules], [rule_id])
        return _check(reply, "rule_slot_release")

    async def grant(self, user_id: str, op_id: str, amount: int, reason: str) -> Balance:
        user = self.keys.user(user_id)
        reply = await self._run(
            "grant",
            [user.base, user.ops, user.bucket.ledger],
            [user_id, op_id, amount, reason, now_ms()],
        )
        code = _check(reply, "grant")
        return Balance(code, *(int(v) for v in reply[1:5]))

    async def set_plan(self, user_id: str, op_id: str, plan: Plan) -> Code:
        user = self.keys.user(user_id)
        reply = await self._run(
            "set_plan",
            [user.base, user.ops],
            [op_id, plan.name, plan.concurrency, plan.rule_slots],
        )
        return _check(reply, "set_plan")

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
            [job.base, job.items, job.callbacks, job.meta, job.bucket.flush, user.jobs],
            [job_id],
        )
        return _check(reply, "flush_done")

    async def ledger_ack(self, bucket: int, count: int, first_entry: str) -> Code:
        ledger = self.keys.bucket(bucket).ledger
        reply = await self._run("ledger_ack", [ledger], [count, first_entry])
        return _check(reply, "ledger_ack")

    async def user_record(self, user_id: str) -> dict[str, str]:
        record: dict[str, str] = await self.runner.hgetall(self.keys.user(user_id).base)
        return record

    async def job_record(self, job_id: str) -> dict[str, str]:
        keys = self.keys.job(job_id)
        if keys is None:
            return {}
        record: dict[str, str] = await self.runner.hgetall(keys.base)
        return record

    async def job_snapshot(self, job_id: str) -> tuple[dict[str, str], dict[str, str], str | None]:
        """The job hash, its items hash and its meta JSON, in one round trip."""
        keys = self.job_keys(job_id)
        if self.runner is not self.client:  # join the batch other requests are sending
            job, items, meta = await asyncio.gather(
                self.runner.hgetall(keys.base), self.runner.hgetall(keys.items),
                self.runner.get(keys.meta))
            return job, items, meta
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.base)
            pipe.hgetall(keys.items)
            pipe.get(keys.meta)
            job, items, meta = await pipe.execute()
        return job, items, meta
