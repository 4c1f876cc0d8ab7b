"""The user's own view (GET /me) and the admin's writes: users, plans and grants, SQL first.
Provisioning an unknown user is service.jobs.provisioning's."""

from __future__ import annotations

import uuid

from service.errors import IdempotencyKeyReused, NotFound
from service.history.balances import grant_row, record_admin_op, user_plan
from service.history.models import LedgerEntry
from service.history.queries import insert_ledger, set_user_plan
from service.jobs.alerts import min_price
from service.jobs.provisioning import provision_user, restore_user
from service.runtime import Runtime
from service.state.codes import Code
from service.state.plans import DEFAULT_PLAN, PLANS
from service.state.replies import Balance
from service.state.store import op_digest


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
        return await rt.core.grant(user_id, idempotency_key, amount, reason,
                                   min_price=min_price(rt))
