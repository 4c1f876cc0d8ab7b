"""Replay: redis-py retries a command that timed out, so a script may run twice with the same
arguments. The second run of every mutating script must change nothing at all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from service.state.plans import PLANS
from service.state.store import Core
from tests.core.job_setup import FLUSH_MS, HOLD_MS, new_job, new_user, report
from tests.core.redis_state import snapshot

Call = Callable[[], Awaitable[Any]]


async def ensure_user(core: Core) -> Call:
    return lambda: core.ensure_user("ann", PLANS["pro"], 100)


async def reserve(core: Core) -> Call:
    user = await new_user(core, "ann")
    job_id = core.keys.new_job_id(user)
    return lambda: core.reserve(job_id=job_id, user_id=user, total=3, price=10,
                                hold_ttl_ms=HOLD_MS, meta_json="{}")


async def reserve_with_idempotency_key(core: Core) -> Call:
    user = await new_user(core, "ann")
    job_id = core.keys.new_job_id(user)
    return lambda: core.reserve(job_id=job_id, user_id=user, total=3, price=10,
                                hold_ttl_ms=HOLD_MS, meta_json="{}", idempotency_key="k",
                                body_hash="h")


def transition(state: str, from_state: str, to_state: str) -> Callable[[Core], Awaitable[Call]]:
    async def setup(core: Core) -> Call:
        user = await new_user(core, "ann")
        job_id = await new_job(core, user, state=state)
        return lambda: core.transition(job_id, from_state, to_state, owner=user, lease_ms=5_000)
    return setup


def item_result(total: int, ok: bool) -> Callable[[Core], Awaitable[Call]]:
    async def setup(core: Core) -> Call:
        user = await new_user(core, "ann")
        job_id = await new_job(core, user, total=total, state="queued")
        return lambda: report(core, job_id, user, total - 1, ok=ok)
    return setup


def finish(how: str) -> Callable[[Core], Awaitable[Call]]:
    async def setup(core: Core) -> Call:
        user = await new_user(core, "ann")
        job_id = await new_job(core, user, total=3, state="running")
        await report(core, job_id, user, 0)
        if how == "cancel":
            return lambda: core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS)
        return lambda: core.settle(job_id, user, how, reason="x", flush_delay_ms=FLUSH_MS)
    return setup


async def renew_lease(core: Core) -> Call:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="running")
    return lambda: core.renew_lease(job_id, user, 90_000)


async def rule_slot_take(core: Core) -> Call:
    user = await new_user(core, "ann")
    return lambda: core.rule_slot_take(user, "r1")


async def rule_slot_release(core: Core) -> Call:
    user = await new_user(core, "ann")
    await core.rule_slot_take(user, "r1")
    return lambda: core.rule_slot_release(user, "r1")


def grant(amount: int) -> Callable[[Core], Awaitable[Call]]:
    async def setup(core: Core) -> Call:
        user = await new_user(core, "ann", credits=100)
        return lambda: core.grant(user, "op-1", amount, "admin")
    return setup


async def set_plan(core: Core) -> Call:
    user = await new_user(core, "ann", plan="free")
    return lambda: core.set_plan(user, "op-1", PLANS["pro"])


async def claim_due(core: Core) -> Call:
    # The clock is frozen, so each kind is made due now: a hold, a lease, a queued job, a flush.
    user = await new_user(core, "ann")
    await new_job(core, user, hold_ms=0)
    await new_job(core, user, state="queued")
    running = await new_job(core, user, state="running")
    await core.renew_lease(running, user, 0)
    finished = await new_job(core, user, state="running")
    await core.settle(finished, user, "failed", reason="x", flush_delay_ms=0)
    bucket = core.keys.bucket_of_user(user)
    due = await core.claim_due(bucket, limit=10, claim_ms=0, requeue_after_ms=10**9)
    assert due.expired_holds and due.expired_leases and due.due_flushes
    return lambda: core.claim_due(bucket, limit=10, claim_ms=60_000, requeue_after_ms=0)


async def flush_done(core: Core) -> Call:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, total=1, state="running")
    await report(core, job_id, user, 0)
    return lambda: core.flush_done(job_id, user)


async def ledger_ack(core: Core) -> Call:
    user = await new_user(core, "ann", credits=10)
    await core.grant(user, "op-1", 5, "a")
    bucket = core.keys.bucket_of_user(user)
    head = await core.client.lindex(core.keys.bucket(bucket).ledger, 0)
    return lambda: core.ledger_ack(bucket, 1, head)


OPERATIONS: dict[str, Callable[[Core], Awaitable[Call]]] = {
    "ensure_user": ensure_user,
    "reserve": reserve,
    "reserve_with_idempotency_key": reserve_with_idempotency_key,
    "transition_upload": transition("created", "created", "uploaded"),
    "transition_queue": transition("uploaded", "uploaded", "queued"),
    "transition_start": transition("queued", "queued", "running"),
    "item_result": item_result(total=3, ok=True),
    "item_result_last_ok": item_result(total=1, ok=True),
    "item_result_last_failed": item_result(total=1, ok=False),
    "settle_done": finish("done"),
    "settle_failed": finish("failed"),
    "cancel": finish("cancel"),
    "renew_lease": renew_lease,
    "rule_slot_take": rule_slot_take,
    "rule_slot_release": rule_slot_release,
    "grant": grant(25),
    "grant_negative": grant(-25),
    "set_plan": set_plan,
    "claim_due": claim_due,
    "flush_done": flush_done,
    "ledger_ack": ledger_ack,
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
async def test_running_a_script_twice_changes_nothing_the_second_time(
    core: Core, frozen_clock: list[int], operation: str
) -> None:
    call = await OPERATIONS[operation](core)
    start = await snapshot(core.client, core.keys.prefix)
    await call()
    after_first = await snapshot(core.client, core.keys.prefix)
    assert after_first != start, "the first run must do something for the replay to mean anything"
    await call()
    assert await snapshot(core.client, core.keys.prefix) == after_first
