"""The dispatch order's state: what waits in tollgate before it enters RQ (docs/scheduling.md).

Each executed job waits in its bucket's `waiting` zset (the truth, in the owner's slot) and
in its queue's cross-bucket order (`SchedKeys`), which the dispatcher reads from the head.
The order is written by Python after the bucket's script, as the due index is; a crash
between the two leaves a job out of the order or a stale entry in it: the dispatcher drops
stale entries when it meets them, and `rebuild` puts back what the buckets hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.state.base import now_ms
from service.state.codes import Code
from service.state.keys import SchedKeys
from service.state.replies import check_reply
from service.state.store import Core

PRIORITIES = ("high", "normal", "low")
# Seconds from execute to the job's first batch in RQ (tollgate_dispatch_wait_seconds).
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
# The histogram's fields, `<priority>:<bound>` (lua/sched_order.lua counts them).
WAIT_BOUNDS = ",".join(str(bound) for bound in WAIT_BUCKETS)
# Scripts in flight in a rebuild (a pool that is full raises, it does not wait).
IN_FLIGHT = 8


@dataclass(frozen=True, slots=True)
class Admitted:
    code: Code
    score: str  # '' when nothing of the job waits (running, every batch handed)
    deadline_ms: int | None


@dataclass(frozen=True, slots=True)
class Taken:
    code: str  # take | retry | claimed | gone | none
    first: int
    last: int
    priority: str = "normal"


@dataclass(frozen=True, slots=True)
class Handed:
    code: str  # ok | already | gone | not_claimed
    score: str = ""
    items: int = 0
    first_dispatch: bool = False
    queued_at_ms: int | None = None
    vtag: str = ""
    priority: str = "normal"


class SchedState:
    """The scripts and reads of the dispatch order, over one Core."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.keys = core.keys

    def order_keys(self, queue: str) -> SchedKeys:
        return self.keys.sched(queue)

    async def vtime(self, queue: str, priority: str) -> float:
        raw = await self.core.runner.execute_command("HGET", self.keys.sched(queue).info,
                                                     f"v:{priority}")
        return float(raw) if raw else 0.0

    async def admit(self, job_id: str, owner: str, *, queue: str, vtime: float,
                    batch_size: int, weights: str) -> Admitted:
        """uploaded -> queued and waiting (lua/admit.lua); ALREADY on a queued job."""
        job = self.core.job_keys(job_id)
        b = job.bucket
        reply = await self.core.run_script(
            "admit",
            keys={"job": job.base, "holds": b.holds, "queued": b.queued, "waiting": b.waiting,
                  "user": job.user(owner).base, "webhook_log": job.webhooks,
                  "webhooks": b.webhooks},
            args={"job_id": job_id, "owner": owner, "now": now_ms(), "queue": queue,
                  "vtime": repr(vtime), "batch_size": batch_size, "weights": weights})
        code = check_reply(reply, "admit")
        named: dict[str, Any] = dict(zip(("code", "state", "score", "batches", "deadline"),
                                         reply, strict=False))
        deadline = named.get("deadline") or ""
        await self.core._mark_job_due(job_id, now_ms())  # a requeue is due if it is lost
        return Admitted(code, str(named.get("score") or ""),
                        int(deadline) if deadline else None)

    async def take(self, job_id: str, *, claim_ms: int, most: int, before: float | None
                   ) -> Taken:
        job = self.core.job_keys(job_id)
        reply = await self.core.run_named(
            "dispatch_take", keys={"job": job.base, "waiting": job.bucket.waiting},
            args={"job_id": job_id, "now": now_ms(), "claim_ms": claim_ms, "most": most,
                  "before": "" if before is None else repr(before)})
        if reply["code"] not in ("take", "retry", "claimed", "gone", "none"):
            raise RuntimeError(f"dispatch_take {job_id}: {reply}")
        return Taken(str(reply["code"]), int(reply.get("first") or 0),
                     int(reply.get("last") or 0), str(reply.get("priority") or "normal"))

    async def done(self, job_id: str, first: int, last: int, *, lease_ms: int) -> Handed:
        job = self.core.job_keys(job_id)
        now = now_ms()
        reply = await self.core.run_named(
            "dispatch_done",
            keys={"job": job.base, "waiting": job.bucket.waiting, "leases": job.bucket.leases},
            args={"job_id": job_id, "first": first, "last": last, "now": now,
                  "lease_until": now + lease_ms})
        code = str(reply["code"])
        if code != "ok":
            if code not in ("already", "gone", "not_claimed"):
                raise RuntimeError(f"dispatch_done {job_id}: {reply}")
            return Handed(code)
        queued_at = reply.get("queued_at") or ""
        return Handed(code, str(reply["score"] or ""), int(reply["items"]),
                      bool(int(reply["first_dispatch"])), int(queued_at) if queued_at else None,
                      str(reply["vtag"]), str(reply["priority"]))

    async def place(self, queue: str, job_id: str, score: str, *, items: int = 0,
                    deadline_ms: int | None = None, priority: str = "normal",
                    vtag: str = "", end_claim: bool = False,
                    wait_s: float | None = None) -> None:
        """Puts the job in the queue's order at `score`, or takes it out (''). A dispatcher
        that handed its batches ends its claim and counts its first dispatch wait
        (`wait_s`) in the same round trip."""
        sched = self.keys.sched(queue)
        keys = {"order": sched.order, "items": sched.items, "info": sched.info,
                "deadlines": sched.deadlines}
        opts: dict[str, str | int | float | bool] = {}
        if end_claim or wait_s is not None:
            keys |= {"claims": sched.claims, "waits": sched.waits}
            opts = {"claim": True} if end_claim else {}
        if wait_s is not None:
            opts |= {"wait": round(wait_s, 6), "bounds": WAIT_BOUNDS}
        await self.core.run_checked(
            "sched_order", keys=keys,
            args={"job_id": job_id, "score": score, "items": items,
                  "deadline": "" if deadline_ms is None else deadline_ms,
                  "priority": priority, "vtag": vtag, "opts": opts})

    async def head(self, queue: str, count: int) -> list[tuple[str, float]]:
        """The first `count` jobs of the order, with their places."""
        raw = await self.core.runner.execute_command(
            "ZRANGE", self.keys.sched(queue).order, 0, count - 1, "WITHSCORES")
        return _pairs(raw)

    async def due_deadlines(self, queue: str, now: int, limit: int) -> list[str]:
        raw = await self.core.runner.execute_command(
            "ZRANGEBYSCORE", self.keys.sched(queue).deadlines, "-inf", now, "LIMIT", 0, limit)
        return [str(job_id) for job_id in raw]

    async def position(self, queue: str, job_id: str) -> int | None:
        """Jobs ahead of this one in its queue's order: one ZRANK, O(log n)."""
        rank = await self.core.runner.execute_command("ZRANK", self.keys.sched(queue).order,
                                                      job_id)
        return None if rank is None else int(rank)

    async def queued_items(self, queue: str) -> int:
        raw = await self.core.runner.execute_command("HGET", self.keys.sched(queue).info,
                                                     "items")
        return max(0, int(raw or 0))


def _pairs(raw: Any) -> list[tuple[str, float]]:
    """ZRANGE ... WITHSCORES as (member, score) pairs under RESP2 and RESP3 shapes."""
    if raw and isinstance(raw[0], list | tuple):
        return [(str(member), float(score)) for member, score in raw]
    return [(str(raw[i]), float(raw[i + 1])) for i in range(0, len(raw), 2)]


class SchedReads(SchedState):
    """The single-key reads and writes of scheduling that no script needs: here, so that
    only service.state touches Core's client."""

    async def job_fields(self, job_id: str, names: tuple[str, ...]) -> list[Any]:
        raw: list[Any] = await self.core.runner.execute_command(
            "HMGET", self.core.job_keys(job_id).base, *names)
        return raw

    async def waiting_place(self, job_id: str) -> float | None:
        score = await self.core.runner.execute_command(
            "ZSCORE", self.core.job_keys(job_id).bucket.waiting, job_id)
        return None if score is None else float(score)

    async def bucket_waiting(self, bucket: int) -> list[tuple[str, float]]:
        return _pairs(await self.core.runner.execute_command(
            "ZRANGE", self.keys.bucket(bucket).waiting, 0, -1, "WITHSCORES"))

    async def drop_waiting(self, bucket: int, job_id: str) -> None:
        await self.core.runner.execute_command("ZREM", self.keys.bucket(bucket).waiting, job_id)

    async def lock(self, queue: str, token: str, ms: int) -> bool:
        """The queue is this dispatcher's for `ms` (taken, or still its own: renewed); one
        round trip (lua/sched_lock.lua)."""
        return bool(await self.core.run_script(
            "sched_lock", keys={"lock": self.keys.sched(queue).lock},
            args={"token": token, "ms": ms}))

    async def unlock(self, queue: str, token: str) -> None:
        """Gives the queue's lock back if it is still this dispatcher's."""
        await self.core.run_script("sched_lock", keys={"lock": self.keys.sched(queue).lock},
                                   args={"token": token, "ms": 0})

    async def note_claim(self, queue: str, job_id: str, until_ms: int) -> None:
        await self.core.runner.execute_command("ZADD", self.keys.sched(queue).claims,
                                               until_ms, job_id)

    async def end_claim(self, queue: str, job_id: str) -> None:
        await self.core.runner.execute_command("ZREM", self.keys.sched(queue).claims, job_id)

    async def due_claims(self, queue: str, now: int, limit: int) -> list[str]:
        raw = await self.core.runner.execute_command(
            "ZRANGEBYSCORE", self.keys.sched(queue).claims, "-inf", now, "LIMIT", 0, limit)
        return [str(job_id) for job_id in raw]

    async def drop_deadline(self, queue: str, job_id: str) -> None:
        await self.core.runner.execute_command("ZREM", self.keys.sched(queue).deadlines, job_id)

    async def waits(self, queue: str) -> dict[str, str]:
        raw = await self.core.runner.execute_command("HGETALL", self.keys.sched(queue).waits)
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        items = list(raw or [])
        return {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}
