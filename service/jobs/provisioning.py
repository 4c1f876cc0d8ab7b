"""Provisioning: a valid token of an unknown user creates it on the free plan.

Lazily: a request costs nothing extra for a known user; the scripts that need the user
(reserve, rule_slot_take) answer not_found for an unknown one, and the caller provisions and
retries. SQL is written first: the users row and, for a new user only, its signup ledger
entry. The Redis record is then built from SQL: the plan from `users`, the balance from the
ledger. So a user whose Redis record was lost (a restart without persistence, a failover) is
rebuilt with the balance it had, and never gets its signup credits twice. Jobs that were
live in the lost Redis, or finished and not flushed yet, left a hold in the ledger with no
release: they are refunded in full (a release entry), and every job the ledger names without
a jobs_log row gets one (`canceled`, reason `lost_with_redis`), so its owner finds it, as the
README says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from service.errors import NotFound
from service.history.balances import (
    ledger_totals,
    refund_open_holds,
    signup_row,
    user_plan,
    write_lost_jobs,
)
from service.history.queries import ensure_user_row, insert_ledger
from service.jobs.alerts import restore_alerts
from service.jobs.apikeys import restore_keys
from service.runtime import Runtime
from service.state.plans import DEFAULT_PLAN, PLANS

T = TypeVar("T")

# The reason on the release of a job that Redis lost while it was live.
LOST_JOB_REASON = "lost_with_redis"


async def provision_user(rt: Runtime, user_id: str, *, plan: str = DEFAULT_PLAN,
                         credits: int | None = None) -> bool:
    """Makes sure SQL and Redis know the user; True when the user is new (its signup
    credits: `credits`, by default TOLLGATE_SIGNUP_CREDITS)."""
    credits = rt.settings.signup_credits if credits is None else credits
    async with rt.sessions() as session, session.begin():
        created = await ensure_user_row(session, user_id, plan)
        if created and credits > 0:
            await insert_ledger(session, [signup_row(user_id, credits)])
    await restore_user(rt, user_id, signup_credits=credits if created else 0)
    return created


async def restore_user(rt: Runtime, user_id: str, *, signup_credits: int = 0) -> None:
    """Builds the user's Redis record from SQL, unless Redis has one (`signup_credits`: what
    SQL's ledger just granted a new user, for tollgate_credits_total)."""
    if await rt.core.user_exists(user_id):
        return
    async with rt.sessions() as session, session.begin():
        plan = await user_plan(session, user_id) or DEFAULT_PLAN
        await refund_open_holds(session, user_id, LOST_JOB_REASON)
        await write_lost_jobs(session, user_id, LOST_JOB_REASON)
        totals = (await ledger_totals(session, [user_id])).get(user_id)
    available = totals.total if totals else 0
    spent = -totals.charges if totals else 0
    # Its API keys and their period spend first: no reserve runs before the user's record.
    await restore_keys(rt, user_id)
    await rt.core.restore_user(user_id, PLANS.get(plan, PLANS[DEFAULT_PLAN]),
                               available=available, spent=spent, granted=available + spent,
                               signup_credits=signup_credits)
    await restore_alerts(rt, user_id)  # settings from SQL, fired state from the balance


async def rebuild_if_lost(rt: Runtime, user_id: str) -> bool:
    """For a read that found nothing (GET of a job): a user SQL knows and Redis lost is
    rebuilt now, so that its lost jobs have their rows; True when it was. A user SQL does
    not know is left alone (its first request provisions it)."""
    if await rt.core.user_exists(user_id):
        return False
    async with rt.sessions() as session:
        if await user_plan(session, user_id) is None:
            return False
    await restore_user(rt, user_id)
    return True


async def as_known_user(rt: Runtime, user_id: str, call: Callable[[], Awaitable[T]]) -> T:
    """Runs `call`; when it finds no such user (a first request, or a Redis that lost the
    record), provisions the user and runs it once more."""
    try:
        return await call()
    except NotFound:
        await provision_user(rt, user_id)
        return await call()
