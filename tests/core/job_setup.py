"""Builds users and jobs in a wanted state through the public Core calls only."""

from __future__ import annotations

from service.state.plans import PLANS, Plan
from service.state.replies import JobProgress
from service.state.store import Core

STEPS = (("created", "uploaded"), ("uploaded", "queued"), ("queued", "running"))
LEASE_MS = 60_000
FLUSH_MS = 5_000
HOLD_MS = 600_000


async def new_user(core: Core, user_id: str, credits: int = 1_000, plan: str | Plan = "pro") -> str:
    chosen = PLANS[plan] if isinstance(plan, str) else plan
    assert await core.ensure_user(user_id, chosen, credits)
    return user_id


async def new_job(
    core: Core,
    user_id: str,
    *,
    total: int = 3,
    price: int = 10,
    state: str = "created",
    hold_ms: int = HOLD_MS,
) -> str:
    """A reserved job moved forward to `state` (one of created/uploaded/queued/running)."""
    job_id = core.keys.new_job_id(user_id)
    await core.reserve(
        job_id=job_id, user_id=user_id, total=total, price=price, hold_ttl_ms=hold_ms,
        meta_json='{"items": []}',
    )
    for from_state, to_state in STEPS:
        if from_state == state:
            break
        await core.transition(job_id, from_state, to_state, lease_ms=LEASE_MS)
    return job_id


async def report(
    core: Core, job_id: str, owner: str, index: int, ok: bool = True, key: str | None = None
) -> JobProgress:
    return await core.item_result(
        job_id, owner, callback_key=key or f"cb-{index}", index=index, ok=ok,
        detail=f"out/{index}" if ok else "boom", lease_ms=LEASE_MS, flush_delay_ms=FLUSH_MS,
    )
