"""Balance alerts and the account webhook (docs/billing.md, "Balance alerts"): settings in
SQL first, then in the user's Redis hash (lua/alert_set.lua), where the scripts that move
`available` fire them (lua/includes/alerts.lua). A Redis loss gets them back from SQL
(`restore_alerts`, from service.jobs.provisioning), the fired state from the balance.
"""

from __future__ import annotations

import json
from typing import Any

from service.errors import NotFound
from service.history.alerts import read_alerts, save_alerts
from service.history.models import AccountAlerts
from service.jobs.deliveries import log_entry
from service.jobs.webhooks import resolve_allowed
from service.runtime import Runtime

ACCOUNT_EVENTS = ("credits.low", "credits.exhausted", "credits.expiring")


def min_price(rt: Runtime) -> int:
    """The cheapest model's price: below it, no job can be made (credits.exhausted)."""
    return min(model.price_per_item for model in rt.models)


async def _apply(rt: Runtime, user_id: str, row: AccountAlerts | None) -> None:
    await rt.core.alert_set(
        user_id, low_balance=row.low_balance if row else None,
        hook_url=(row.webhook_url or "") if row else "",
        hook_events=tuple(row.webhook_events.split(",")) if row and row.webhook_url else (),
        floor=min_price(rt))


async def _save(rt: Runtime, user_id: str, values: dict[str, Any]) -> AccountAlerts:
    """For a user SQL and Redis know (the caller provisions it first)."""
    async with rt.sessions() as session, session.begin():
        await save_alerts(session, user_id, values)
        row = await read_alerts(session, user_id)
    assert row is not None
    await _apply(rt, user_id, row)
    return row


def webhook_view(row: AccountAlerts | None) -> dict[str, Any]:
    if row is None or not row.webhook_url:
        raise NotFound("no account webhook: PUT /me/webhook sets one")
    return {"url": row.webhook_url, "events": row.webhook_events.split(",")}


def alerts_view(row: AccountAlerts | None) -> dict[str, Any]:
    return {"low_balance": row.low_balance if row else None}


async def set_webhook(rt: Runtime, user_id: str, url: str, events: list[str]) -> dict[str, Any]:
    """422 webhook_url_not_allowed for an address a job's webhook may not have either."""
    await resolve_allowed(url, rt.settings.webhook_allow_private)
    wanted = [event for event in ACCOUNT_EVENTS if event in events]
    return webhook_view(await _save(rt, user_id, {"webhook_url": url,
                                                  "webhook_events": ",".join(wanted)}))


async def delete_webhook(rt: Runtime, user_id: str) -> None:
    """Removes it (none set: nothing to do). Deliveries already recorded still go out."""
    await _save(rt, user_id, {"webhook_url": None, "webhook_events": ""})


async def get_webhook(rt: Runtime, user_id: str) -> dict[str, Any]:
    async with rt.sessions() as session:
        return webhook_view(await read_alerts(session, user_id))


async def set_alerts(rt: Runtime, user_id: str, low_balance: int | None) -> dict[str, Any]:
    return alerts_view(await _save(rt, user_id, {"low_balance": low_balance}))


async def get_alerts(rt: Runtime, user_id: str) -> dict[str, Any]:
    async with rt.sessions() as session:
        return alerts_view(await read_alerts(session, user_id))


async def webhook_deliveries(rt: Runtime, user_id: str) -> list[dict[str, Any]]:
    """The account's deliveries Redis keeps (the newest 50), newest first."""
    records = [json.loads(raw) for raw in await rt.core.alert_log(user_id)]
    records.sort(key=lambda record: (int(record["created_at"]), str(record["id"])),
                 reverse=True)
    return [{**log_entry(record), "data": record.get("data")} for record in records]


async def restore_alerts(rt: Runtime, user_id: str) -> None:
    """Puts SQL's settings back into a user record Redis just rebuilt."""
    async with rt.sessions() as session:
        row = await read_alerts(session, user_id)
    if row is not None:
        await _apply(rt, user_id, row)
