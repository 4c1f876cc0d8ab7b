"""The account's alert settings in SQL (account_alerts): what Redis gets back after a loss."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service.history.models import AccountAlerts, utcnow

_ALERTS = cast(Table, AccountAlerts.__table__)


async def save_alerts(session: AsyncSession, user_id: str, values: dict[str, Any]) -> None:
    """Sets the given columns of the user's row (made with the defaults if missing): one
    statement, so two first writes at once never collide."""
    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert(_ALERTS) if dialect == "postgresql" else sqlite.insert(_ALERTS)
    values = {**values, "updated_at": utcnow()}
    row = {"user_id": user_id, "webhook_url": None, "webhook_events": "", "low_balance": None,
           **values}
    await session.execute(insert.values(**row).on_conflict_do_update(
        index_elements=["user_id"], set_=values))


async def read_alerts(session: AsyncSession, user_id: str) -> AccountAlerts | None:
    return await session.get(AccountAlerts, user_id, populate_existing=True)
