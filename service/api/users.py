"""The user's own view (GET /me) and the admin's writes: users, plans and grants, SQL first.
Provisioning an unknown user is service.jobs.provisioning's."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from service.errors import BadArgument, IdempotencyKeyReused, NotFound
from service.history.balances import (
    credit_grant_row,
    grant_row,
    insert_grant,
    record_admin_op,
    user_plan,
)
from service.history.models import CreditGrant, LedgerEntry, utcnow
from service.history.queries import insert_ledger, set_user_plan
from service.jobs.alerts import min_price
from service.jobs.provisioning import provision_user, restore_user
from service.runtime import Runtime
from service.state.codes import Code
from service.state.plans import DEFAULT_PLAN, PLANS
from service.state.replies import Balance
from service.state.store import now_ms, op_digest
from service.state.users import grant_id

# The latest expires_at a grant may take (its ms stay exact in Lua's cjson, 14 digits).
GRANT_EXPIRY_MAX = timedelta(days=36_525)


async def me(rt: Runtime, user_id: str) -> dict[str, object]:
    user, active, rules = await rt.core.user_usage(user_id)
    if user is None:
        await provision_user(rt, user_id)
        return await me(rt, user_id)
    return {
        "user_id": user_id,
        "plan": user.plan,
        "credits": {"available": user.available, "reserved": user.reserved,
                    "spent": user.spent, "granted": user.granted,
                    "grants": await open_grants(rt, user_id)},
        "concurrency": {"active": active, "limit": user.max_active},
        "rule_slots": {"used": rules, "limit": user.max_rules},
    }


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


async def open_grants(rt: Runtime, user_id: str) -> list[dict[str, object]]:
    """The user's open grants (not expired; credits left in them or held from them), in
    burn-down order: the order a hold draws them."""
    now = now_ms()
    grants = [g for g in await rt.core.user_grants(user_id) if g.is_open(now)]
    grants.sort(key=lambda g: (g.expires_at_ms or 2**63, g.kind != "promotional",
                               g.created_ms, g.id))
    return [{"id": g.id, "kind": g.kind, "amount": g.amount, "remaining": g.remaining,
             "expires_at": None if g.expires_at_ms is None else _iso_ms(g.expires_at_ms)}
            for g in grants]


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
                      reason: str, *, kind: str = "paid",
                      expires_at: datetime | None = None) -> Balance:
    """SQL first: the grant's ledger row (and, for a positive amount, its credit_grants row)
    is inserted in a transaction that commits only once Redis applied it (a refusal rolls
    it back). A key SQL has seen is a duplicate without asking Redis, which may have lost
    its own record of the op."""
    if expires_at is not None and (amount <= 0 or not utcnow() < expires_at <= (
            utcnow() + GRANT_EXPIRY_MAX)):
        raise BadArgument("expires_at must be in the future (at most 100 years), on a "
                          "positive amount")
    await known_in_sql(rt, user_id)
    await restore_user(rt, user_id)
    digest = op_digest(idempotency_key)
    row = grant_row(user_id, digest, amount, reason)
    new_grant = credit_grant_row(grant_id(user_id, digest), user_id, kind, amount, expires_at,
                                 row["id"])
    async with rt.sessions() as session, session.begin():
        if not await insert_ledger(session, [row]):
            kept = await session.get(LedgerEntry, row["id"])
            kept_grant = await session.get(CreditGrant, new_grant["id"])
            if (kept is not None and (kept.amount, kept.reason) != (amount, reason)) or (
                    kept_grant is not None and (kept_grant.kind, kept_grant.expires_at)
                    != (kind, expires_at)):
                raise IdempotencyKeyReused("this Idempotency-Key was used for another grant "
                                           "(amount, reason, kind or expires_at)")
            user, _, _ = await rt.core.user_usage(user_id)
            if user is None:
                raise NotFound(f"no user {user_id!r}")
            return Balance(Code.ALREADY, user.available, user.reserved, user.spent,
                           user.granted)
        if amount > 0:
            await insert_grant(session, new_grant)
        expires_ms = None if expires_at is None else int(expires_at.timestamp() * 1000)
        return await rt.core.grant(user_id, idempotency_key, amount, reason, kind=kind,
                                   expires_at_ms=expires_ms, min_price=min_price(rt))
