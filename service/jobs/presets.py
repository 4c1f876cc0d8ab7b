"""What a job runs with: its own model, params and webhook over those of its rule (docs/models.md,
"Params and rule presets"), copied onto the job at reserve, so a later edit or delete of
the rule changes nothing there. The rules themselves are service.api.rules's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from service.errors import NotFound
from service.history.models import Rule
from service.jobs.schemas import JobCreate, WebhookIn
from service.runtime import Runtime
from service.state.keys import is_sortable_id


@dataclass(frozen=True, slots=True)
class Preset:
    """What a job runs with: its model (None: the default one), params and webhook."""

    model: str | None
    params: dict[str, Any]
    webhook: WebhookIn | None
    priority: str = "normal"


def webhook_in(stored: dict[str, Any] | None) -> WebhookIn | None:
    return None if stored is None else msgspec.convert(stored, WebhookIn)


async def job_preset(rt: Runtime, user_id: str, body: JobCreate) -> Preset:
    """The job's own fields over its rule's (404 for a rule the user does not have)."""
    if body.rule_id is None:
        return Preset(body.model, body.params if body.params is not None else {}, body.webhook,
                      body.priority or "normal")
    rule = await get_rule(rt, user_id, body.rule_id)
    return Preset(
        model=body.model if body.model is not None else rule.model,
        params=body.params if body.params is not None else dict(rule.params),
        webhook=body.webhook if body.webhook is not None else webhook_in(rule.webhook),
        priority=body.priority or rule.priority or "normal")


async def get_rule(rt: Runtime, user_id: str, rule_id: str) -> Rule:
    if not is_sortable_id(rule_id):  # before the lookup: a URL may hold a NUL
        raise NotFound(f"no rule {rule_id!r}")
    async with rt.sessions() as session:
        rule = await session.get(Rule, rule_id)
    if rule is None or rule.user_id != user_id or rule.state != "active":
        raise NotFound(f"no rule {rule_id!r}")
    return rule
