"""The outbox's side of Redis: webhook deliveries, signing secrets and the change counter.

The scripts that change a job record its events themselves (lua/includes/outbox.lua); this
is what the flusher and the API do with them. Built over a Core: `Outbox(core)`.
"""

from __future__ import annotations

import asyncio

from service.state.codes import ERRORS, SUCCESS, Code
from service.state.keys import BucketKeys
from service.state.records import JOB_STATE
from service.state.store import Core, now_ms

# The head of an account event's delivery id (lua/includes/alerts.lua).
ACCOUNT_PREFIX = "acct."


class Outbox:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.keys = core.keys

    def delivery_keys(self, delivery_id: str) -> tuple[str, BucketKeys]:
        """(its log, its bucket). A job's delivery id is '<job id>.<kind>[.<n>]': it names
        its job, so the job's log; an account event's is 'acct.<ms>-<n>.<user id>'
        (lua/includes/alerts.lua): it names its user, so the user's account log."""
        if delivery_id.startswith(ACCOUNT_PREFIX):
            user = self.keys.user(delivery_id.split(".", 2)[2])
            return user.alert_log, user.bucket
        job = self.core.job_keys(delivery_id.partition(".")[0])
        return job.webhooks, job.bucket

    async def claim(self, bucket: int, *, limit: int, claim_ms: int) -> list[str]:
        reply = await self.core.run_script(
            "webhook_claim", keys={"webhooks": self.keys.bucket(bucket).webhooks},
            args={"now": now_ms(), "limit": limit, "claim_ms": claim_ms})
        return list(reply)

    async def record(self, delivery_id: str) -> str | None:
        raw: str | None = await self.core.runner.execute_command(
            "HGET", self.delivery_keys(delivery_id)[0], delivery_id)
        return raw

    async def add_record(self, delivery_id: str, record: str) -> None:
        """Writes a delivery record (JSON) into its job's log: a redelivery's, before its
        one attempt."""
        await self.core.runner.execute_command(
            "HSET", self.delivery_keys(delivery_id)[0], delivery_id, record)

    async def put_back(self, bucket: int, due: list[tuple[int, str]]) -> None:
        """Claimed deliveries back to the bucket's due set, each due at its time (ms), given
        as (due ms, delivery id). XX: one whose outcome was recorded meanwhile is not added
        again."""
        args = [part for pair in due for part in pair]
        await self.core.runner.execute_command(
            "ZADD", self.keys.bucket(bucket).webhooks, "XX", *args)

    async def result(
        self, delivery_id: str, outcome: str, *, attempts_seen: int, status: int | None,
        next_attempt_ms: int = 0, body: str = "", log_ttl_ms: int,
    ) -> Code:
        log, b = self.delivery_keys(delivery_id)
        reply = await self.core.run_script(
            "webhook_result",
            keys={"webhook_log": log, "webhooks": b.webhooks,
                  "webhook_outcomes": b.webhook_outcomes},
            args={"delivery_id": delivery_id, "outcome": outcome,
                  "attempts_seen": attempts_seen, "status": "" if status is None else status,
                  "now": now_ms(), "next_attempt": next_attempt_ms, "body": body,
                  "log_ttl_ms": log_ttl_ms})
        code = Code(reply[0])
        if code not in SUCCESS:
            raise ERRORS[code](f"webhook_result: {code.value}", reply=reply[1:])
        return code

    async def log(self, job_id: str) -> dict[str, str]:
        entries: dict[str, str] = await self.core.runner.hgetall(
            self.core.job_keys(job_id).webhooks)
        return entries

    async def outcomes(self) -> dict[str, int]:
        """Delivery attempts by outcome, summed over every bucket in one pipeline."""
        async with self.core.client.pipeline(transaction=False) as pipe:
            for bucket in range(self.keys.buckets):
                pipe.hgetall(self.keys.bucket(bucket).webhook_outcomes)
            replies = await pipe.execute()
        totals: dict[str, int] = {}
        for reply in replies:
            for outcome, count in reply.items():
                totals[outcome] = totals.get(outcome, 0) + int(count)
        return totals

    async def secret(self, user_id: str, fresh: str, *, rotate: bool = False) -> str:
        """The user's signing secret; `fresh` becomes it on a rotation or when none exists."""
        key = self.keys.user(user_id).webhook_secret
        run = self.core.runner.execute_command
        if rotate:
            await run("SET", key, fresh)
            return fresh
        if await run("SET", key, fresh, "NX"):
            return fresh
        current: str = await run("GET", key)
        return current

    async def seqs(self, job_ids: list[str]) -> list[str | None]:
        """Each job's change counter, in one round trip: '0' for a live job no change has
        bumped yet, None only for a job with no live record (never created, or flushed), so
        a stream can tell a flushed job from one that has not changed."""
        core = self.core
        if core.runner is not core.client:
            pairs: list[list[str | None]] = list(await asyncio.gather(*(
                core.runner.execute_command("HMGET", core.job_keys(job_id).base, "seq",
                                            JOB_STATE)
                for job_id in job_ids)))
        else:
            async with core.client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hmget(core.job_keys(job_id).base, "seq", JOB_STATE)
                pairs = await pipe.execute()
        return [None if state is None else seq or "0" for seq, state in pairs]
