"""The webhook delivery log in SQL: moved from Redis with its job by the flusher, updated
after a redelivery; GET /jobs/{id}/webhooks reads it for DELIVERY_LOG_DAYS."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.history.models import WebhookDeliveryLog, utcnow
from service.history.queries import _insert

DELIVERY_LOG_DAYS = 30
_DELIVERIES = cast(Table, WebhookDeliveryLog.__table__)
_PROGRESS = ("attempts", "last_status", "delivered_at", "next_attempt_at", "gave_up_at", "body")


async def upsert_deliveries(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Writes each delivery, or its progress over a row with fewer attempts (a flush
    retried with an older read never takes an attempt back)."""
    if not rows:
        return
    statement = _insert(session, _DELIVERIES)
    statement = statement.on_conflict_do_update(
        index_elements=["id"], set_={name: statement.excluded[name] for name in _PROGRESS},
        where=_DELIVERIES.c.attempts <= statement.excluded.attempts)
    await session.execute(statement, rows)


async def job_deliveries(session: AsyncSession, job_id: str) -> list[WebhookDeliveryLog]:
    since = utcnow() - timedelta(days=DELIVERY_LOG_DAYS)
    query = (select(WebhookDeliveryLog)
             .where(WebhookDeliveryLog.job_id == job_id,
                    WebhookDeliveryLog.created_at >= since)
             .order_by(WebhookDeliveryLog.created_at, WebhookDeliveryLog.id))
    return list((await session.scalars(query)).all())


async def expire_deliveries(session: AsyncSession) -> None:
    """Deliveries older than DELIVERY_LOG_DAYS leave the log (index on created_at)."""
    await session.execute(delete(WebhookDeliveryLog).where(
        WebhookDeliveryLog.created_at < utcnow() - timedelta(days=DELIVERY_LOG_DAYS)))
