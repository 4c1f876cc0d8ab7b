"""Provisioning: the first valid token of an unknown user creates it, once per process."""

from __future__ import annotations

from service.db.history import ensure_user_row
from service.plans import DEFAULT_PLAN, PLANS
from service.runtime import Runtime


async def provision_user(rt: Runtime, user_id: str) -> None:
    if user_id in rt.provisioned:
        return
    await rt.core.ensure_user(user_id, PLANS[DEFAULT_PLAN], rt.settings.signup_credits)
    async with rt.sessions() as session, session.begin():
        await ensure_user_row(session, user_id, DEFAULT_PLAN)
    rt.provisioned.add(user_id)


async def me(rt: Runtime, user_id: str) -> dict[str, object]:
    user = rt.core.keys.user(user_id)
    async with rt.core.client.pipeline(transaction=False) as pipe:
        pipe.hgetall(user.base)
        pipe.scard(user.active)
        pipe.scard(user.rules)
        record, active, rules = await pipe.execute()
    if not record:
        # Redis lost the user (a restart without persistence): provision again.
        rt.provisioned.discard(user_id)
        await provision_user(rt, user_id)
        return await me(rt, user_id)
    return {
        "user_id": user_id,
        "plan": record["plan"],
        "credits": {"available": int(record["available"]), "reserved": int(record["reserved"]),
                    "spent": int(record["spent"]), "granted": int(record["granted"])},
        "concurrency": {"active": active, "limit": int(record["max_active"])},
        "rule_slots": {"used": rules, "limit": int(record["max_rules"])},
    }
