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

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from service.errors import IdempotencyKeyReused, NotFound
from service.history.balances import (
    grant_row,
    ledger_totals,
    record_admin_op,
    refund_open_holds,
    signup_row,
    user_plan,
    write_lost_jobs,
)
from service.history.models import LedgerEntry
from service.history.queries import ensure_user_row, insert_ledger, set_user_plan
from service.runtime import Runtime
from service.state.codes import Code
from service.state.plans import DEFAULT_PLAN, PLANS
from service.state.replies import Balance
from service.state.store import op_digest

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
    await rt.core.restore_user(user_id, PLANS.get(plan, PLANS[DEFAULT_PLAN]),
                               available=available, spent=spent, granted=available + spent,
                               signup_credits=signup_credits)


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


async def me(rt: Runtime, user_id: str) -> dict[str, object]:
    user, active, rules = await rt.core.user_usage(user_id)
    if user is None:
        await provision_user(rt, user_id)
        return await me(rt, user_id)
    return {
        "user_id": user_id,
        "plan": user.plan,
        "credits": {"available": user.available, "reserved": user.reserved,
                    "spent": user.spent, "granted": user.granted},
        "concurrency": {"active": active, "limit": user.max_active},
        "rule_slots": {"used": rules, "limit": user.max_rules},
    }


async def known_in_sql(rt: Runtime, user_id: str) -> str:
    """The user's plan as SQL has it; NotFound for a user SQL does not know."""
    async with rt.sessions() as session:
        plan = await user_plan(session, user_id)
    if plan is None:
        raise NotFound(f"no user {user_id!r}")
    return plan


async def admin_create_user(rt: Runtime, user_id: str, plan: str, credits: int) -> bool:
    """False when the user exists already (its Redis record is rebuilt if it was lost)."""
    return await provision_user(rt, user_id, plan=plan, credits=credits)


async def admin_set_plan(rt: Runtime, user_id: str, plan: str, idempotency_key: str | None
                         ) -> None:
    """SQL first: with a key, the op is recorded in the same transaction as the change, so
    a retry applies nothing; without one, setting a plan is idempotent by value. Redis then
    takes the plan SQL holds now."""
    await known_in_sql(rt, user_id)
    await restore_user(rt, user_id)
    async with rt.sessions() as session, session.begin():
        if idempotency_key is None or await record_admin_op(
                session, f"plan:{user_id}:{op_digest(idempotency_key)}", user_id, "plan", plan):
            await set_user_plan(session, user_id, plan)
        current = await user_plan(session, user_id) or plan
    await rt.core.set_plan(user_id, idempotency_key or uuid.uuid4().hex,
                           PLANS.get(current, PLANS[DEFAULT_PLAN]))


async def admin_grant(rt: Runtime, user_id: str, idempotency_key: str, amount: int,
                      reason: str) -> Balance:
    """SQL first: the grant's ledger row is inserted in a transaction that commits only once
    Redis applied it (a refusal rolls it back). A key SQL has seen is a duplicate without
    asking Redis, which may have lost its own record of the op."""
    await known_in_sql(rt, user_id)
    await restore_user(rt, user_id)
    row = grant_row(user_id, op_digest(idempotency_key), amount, reason)
    async with rt.sessions() as session, session.begin():
        if not await insert_ledger(session, [row]):
            kept = await session.get(LedgerEntry, row["id"])
            if kept is not None and (kept.amount, kept.reason) != (amount, reason):
                raise IdempotencyKeyReused("this Idempotency-Key was used for another grant "
                                           "(amount or reason)")
            user, _, _ = await rt.core.user_usage(user_id)
            if user is None:
                raise NotFound(f"no user {user_id!r}")
            return Balance(Code.ALREADY, user.available, user.reserved, user.spent,
                           user.granted)
        return await rt.core.grant(user_id, idempotency_key, amount, reason)
