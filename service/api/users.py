"""Provisioning: a valid token of an unknown user creates it on the free plan.

Lazily: a request costs nothing extra for a known user; the scripts that need the user
(reserve, rule_slot_take) answer not_found for an unknown one, and the caller provisions and
retries. The SQL row is written before the Redis record, so a user Redis knows always has a
row, even after a crash between the two.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from service.errors import NotFound
from service.history.queries import ensure_user_row
from service.runtime import Runtime
from service.state.plans import DEFAULT_PLAN, PLANS

T = TypeVar("T")


async def provision_user(rt: Runtime, user_id: str) -> None:
    async with rt.sessions() as session, session.begin():
        await ensure_user_row(session, user_id, DEFAULT_PLAN)
    await rt.core.ensure_user(user_id, PLANS[DEFAULT_PLAN], rt.settings.signup_credits)


async def as_known_user(rt: Runtime, user_id: str, call: Callable[[], Awaitable[T]]) -> T:
    """Runs `call`; when it finds no such user (a first request, or a Redis that lost the
    record), provisions the user and runs it once more."""
    try:
        return await call()
    except NotFound:
        await provision_user(rt, user_id)
        return await call()


async def me(rt: Runtime, user_id: str) -> dict[str, object]:
    user = rt.core.keys.user(user_id)
    async with rt.core.client.pipeline(transaction=False) as pipe:
        pipe.hgetall(user.base)
        pipe.scard(user.active)
        pipe.scard(user.rules)
        record, active, rules = await pipe.execute()
    if not record:
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
