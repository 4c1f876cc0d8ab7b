"""API keys between SQL and Redis: a key's Redis record built from its api_keys row, and the
period spend rebuilt from the jobs made through it, for a Redis that lost them.

SQL is the truth for a key's existence (a revoked or expired row never comes back); Redis
holds what the hot path reads: the record for authentication and the spend counter that
reserve.lua checks with the hold.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.history.models import ApiKey, JobLog
from service.runtime import Runtime
from service.state.apikeys import KeyRecord, period_number, period_start
from service.state.base import now_ms


def record_of(row: ApiKey) -> KeyRecord:
    expires = row.expires_at
    return KeyRecord(
        key_id=row.id, user_id=row.user_id, secret_hash=row.secret_hash,
        scopes=frozenset(filter(None, row.scopes.split(","))), cap=row.cap_credits,
        period=row.cap_period,
        expires_at_ms=None if expires is None else int(expires.timestamp() * 1000))


def usable(row: ApiKey | None, at: datetime | None = None) -> bool:
    """Not revoked and not expired."""
    if row is None or row.revoked_at is not None:
        return False
    return row.expires_at is None or row.expires_at > (at or datetime.now(UTC))


async def period_spent(session: AsyncSession, row: ApiKey, at_ms: int) -> tuple[int, int]:
    """(period number, credits charged through the key in that period): what the counter
    holds once every job of the period has ended, as after a Redis loss (its live jobs were
    released as lost, charging nothing)."""
    period = row.cap_period or "day"
    number = period_number(period, at_ms)
    charged = await session.scalar(
        select(func.coalesce(func.sum(JobLog.charged), 0))
        .where(JobLog.key_id == row.id, JobLog.created_at >= period_start(period, number)))
    return number, int(charged or 0)


async def restore_key(rt: Runtime, row: ApiKey, spent: tuple[int, int] | None) -> None:
    """Puts a usable key back in Redis (idempotent); the lookup by key id last, so that a
    secret finds the key only once its record is there."""
    await rt.core.key_create(record_of(row), restore=True, spent=spent)
    await rt.core.set_key_owner(row.id, row.user_id)


async def restore_keys(rt: Runtime, user_id: str) -> None:
    """Every usable key of a user Redis lost, with its period spend (before the user's own
    record, so that no reserve can count before the counter is there)."""
    at = now_ms()
    async with rt.sessions() as session:
        rows = (await session.scalars(select(ApiKey).where(
            ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None)))).all()
        keys = [(row, await period_spent(session, row, at)) for row in rows if usable(row)]
    for row, spent in keys:
        await restore_key(rt, row, spent)


async def key_row(rt: Runtime, key_id: str) -> ApiKey | None:
    async with rt.sessions() as session:
        return await session.get(ApiKey, key_id)
