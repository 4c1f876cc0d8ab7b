"""Rules: a SQL row and a Redis rule slot that never disagree, even after a crash.

Creating writes the row as 'pending', then takes the slot, then marks the row 'active';
deleting marks it 'deleting', releases the slot, then deletes the row. So a Redis slot always
has a row, and an 'active' row always has a slot. A crash leaves a 'pending' or 'deleting'
row that `repair_rules` finishes on the user's next rule request (both Redis steps are
idempotent by rule id).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from service.api.schemas import RuleCreate
from service.api.users import as_known_user
from service.errors import NotFound, RuleSlotsExhausted
from service.history.models import Rule
from service.runtime import Runtime
from service.state.keys import is_sortable_id, new_sortable_id
from service.state.records import iso_z

# A 'pending' row younger than this may belong to a request still in flight.
PENDING_GRACE = timedelta(seconds=30)


def rule_view(rule: Rule) -> dict[str, Any]:
    return {"id": rule.id, "name": rule.name, "params": rule.params,
            "created_at": iso_z(rule.created_at)}


async def repair_rules(rt: Runtime, user_id: str) -> None:
    cutoff = datetime.now(UTC) - PENDING_GRACE
    async with rt.sessions() as session:
        stuck = (await session.scalars(select(Rule).where(
            Rule.user_id == user_id, Rule.state.in_(("pending", "deleting"))))).all()
    for rule in stuck:
        if rule.state == "deleting":
            await rt.core.rule_slot_release(user_id, rule.id)
            async with rt.sessions() as session, session.begin():
                await session.execute(delete(Rule).where(Rule.id == rule.id))
        elif rule.created_at < cutoff:
            holds_slot = await rt.core.holds_rule_slot(user_id, rule.id)
            async with rt.sessions() as session, session.begin():
                if holds_slot:
                    await session.execute(
                        update(Rule).where(Rule.id == rule.id).values(state="active"))
                else:
                    await session.execute(delete(Rule).where(Rule.id == rule.id))


async def list_rules(rt: Runtime, user_id: str) -> list[dict[str, Any]]:
    await repair_rules(rt, user_id)
    async with rt.sessions() as session:
        rules = (await session.scalars(
            select(Rule).where(Rule.user_id == user_id, Rule.state == "active")
            .order_by(Rule.created_at.desc(), Rule.id.desc()))).all()
    return [rule_view(rule) for rule in rules]


async def get_rule(rt: Runtime, user_id: str, rule_id: str) -> Rule:
    if not is_sortable_id(rule_id):  # before the lookup: a URL may hold a NUL
        raise NotFound(f"no rule {rule_id!r}")
    async with rt.sessions() as session:
        rule = await session.get(Rule, rule_id)
    if rule is None or rule.user_id != user_id or rule.state != "active":
        raise NotFound(f"no rule {rule_id!r}")
    return rule


async def create_rule(rt: Runtime, user_id: str, body: RuleCreate) -> dict[str, Any]:
    rule = Rule(id=new_sortable_id(), user_id=user_id, name=body.name, params=body.params,
                state="pending")
    async with rt.sessions() as session, session.begin():
        session.add(rule)
    try:
        await as_known_user(rt, user_id, lambda: rt.core.rule_slot_take(user_id, rule.id))
    except RuleSlotsExhausted as exc:
        async with rt.sessions() as session, session.begin():
            await session.execute(delete(Rule).where(Rule.id == rule.id))
        used, limit = exc.extra["reply"][0], exc.extra["reply"][1]
        raise RuleSlotsExhausted(f"all {limit} rule slots of the plan are in use",
                                 used=used, limit=limit) from None
    async with rt.sessions() as session, session.begin():
        await session.execute(update(Rule).where(Rule.id == rule.id).values(state="active"))
    rule.state = "active"
    return rule_view(rule)


async def delete_rule(rt: Runtime, user_id: str, rule_id: str) -> None:
    await get_rule(rt, user_id, rule_id)
    async with rt.sessions() as session, session.begin():
        await session.execute(update(Rule).where(Rule.id == rule_id).values(state="deleting"))
    await rt.core.rule_slot_release(user_id, rule_id)
    async with rt.sessions() as session, session.begin():
        await session.execute(delete(Rule).where(Rule.id == rule_id))
