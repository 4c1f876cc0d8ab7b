"""Rules: a SQL row and a Redis rule slot that never disagree, even after a crash.

Creating writes the row as 'pending', then takes the slot, then marks the row 'active';
deleting marks it 'deleting', releases the slot, then deletes the row. So a Redis slot always
has a row, and an 'active' row always has a slot. A crash leaves a 'pending' or 'deleting'
row that `repair_rules` finishes on the user's next rule request (both Redis steps are
idempotent by rule id).

A rule is a processing preset (docs/models.md, "Params and rule presets"): a model, its params
(checked against the model's params_schema), a webhook and a priority (checked against the
user's plan, docs/scheduling.md), which a job made with `rule_id`
copies at creation (service.jobs.presets); fields the job gives itself win.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import delete, select, update

from service.api.schemas import RuleCreate, RulePatch
from service.errors import NotFound, RuleSlotsExhausted
from service.history.models import Rule
from service.jobs.create import check_priority
from service.jobs.presets import get_rule, webhook_in
from service.jobs.provisioning import as_known_user
from service.jobs.schemas import WebhookIn
from service.jobs.webhooks import resolve_allowed
from service.runtime import Runtime
from service.state.keys import new_sortable_id
from service.state.records import iso_z

# A 'pending' row younger than this may belong to a request still in flight.
PENDING_GRACE = timedelta(seconds=30)


def rule_view(rule: Rule) -> dict[str, Any]:
    return {"id": rule.id, "name": rule.name, "model": rule.model, "params": rule.params,
            "webhook": rule.webhook, "priority": rule.priority or "normal",
            "created_at": iso_z(rule.created_at)}


def _webhook_stored(webhook: WebhookIn | None) -> dict[str, Any] | None:
    return None if webhook is None else {"url": webhook.url, "events": list(webhook.events)}


async def _check_preset(rt: Runtime, model: str | None, params: dict[str, Any],
                        webhook: WebhookIn | None) -> None:
    """422 for a model not configured, params its schema refuses, a private webhook URL."""
    rt.models.check_params(rt.models.get(model), params)
    if webhook is not None:
        await resolve_allowed(webhook.url, rt.settings.webhook_allow_private)


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


async def create_rule(rt: Runtime, user_id: str, body: RuleCreate) -> dict[str, Any]:
    await _check_preset(rt, body.model, body.params, body.webhook)
    if body.priority is not None:  # 403 priority_not_allowed, as on POST /jobs
        await check_priority(rt, user_id, body.priority)
    rule = Rule(id=new_sortable_id(), user_id=user_id, name=body.name, params=body.params,
                model=body.model, webhook=_webhook_stored(body.webhook),
                priority=body.priority, state="pending")
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


async def update_rule(rt: Runtime, user_id: str, rule_id: str, patch: RulePatch
                      ) -> dict[str, Any]:
    """The fields given replace the rule's; the model and params are checked together, as
    they will be used. Jobs made from the rule before keep their own copy."""
    rule = await get_rule(rt, user_id, rule_id)
    values: dict[str, Any] = {}
    if not isinstance(patch.name, msgspec.UnsetType):
        values["name"] = patch.name
    model = rule.model if isinstance(patch.model, msgspec.UnsetType) else patch.model
    params = rule.params if isinstance(patch.params, msgspec.UnsetType) else patch.params
    webhook = (webhook_in(rule.webhook) if isinstance(patch.webhook, msgspec.UnsetType)
               else patch.webhook)
    await _check_preset(rt, model, params,
                        None if isinstance(patch.webhook, msgspec.UnsetType) else webhook)
    if not isinstance(patch.model, msgspec.UnsetType):
        values["model"] = model
    if not isinstance(patch.params, msgspec.UnsetType):
        values["params"] = params
    if not isinstance(patch.webhook, msgspec.UnsetType):
        values["webhook"] = _webhook_stored(webhook)
    if not isinstance(patch.priority, msgspec.UnsetType):
        if patch.priority is not None:
            await check_priority(rt, user_id, patch.priority)
        values["priority"] = patch.priority
    if values:
        async with rt.sessions() as session, session.begin():
            changed = (await session.execute(update(Rule).where(
                Rule.id == rule_id, Rule.user_id == user_id, Rule.state == "active",
            ).values(**values, updated_at=datetime.now(UTC)).returning(Rule.id))).first()
        if changed is None:  # deleted meanwhile
            raise NotFound(f"no rule {rule_id!r}")
    return rule_view(await get_rule(rt, user_id, rule_id))


async def delete_rule(rt: Runtime, user_id: str, rule_id: str) -> None:
    await get_rule(rt, user_id, rule_id)
    async with rt.sessions() as session, session.begin():
        await session.execute(update(Rule).where(Rule.id == rule_id).values(state="deleting"))
    await rt.core.rule_slot_release(user_id, rule_id)
    async with rt.sessions() as session, session.begin():
        await session.execute(delete(Rule).where(Rule.id == rule_id))
