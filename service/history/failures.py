"""flush_failures: records SQL refused, set aside by the flusher and retried by an operator.

The record is kept as JSON text (NUL and other control characters escaped), so that the
very value PostgreSQL refused can be stored and shown; its id is kept the same way.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.contract import clean_error
from service.history.models import FlushFailure, utcnow
from service.history.queries import _insert

_FAILURES = cast(Table, FlushFailure.__table__)


def record_hash(kind: str, record_id: str) -> str:
    return hashlib.sha256(f"{kind}\n{record_id}".encode("utf-8", "surrogatepass")).hexdigest()


async def set_aside(
    session: AsyncSession,
    *,
    kind: str,
    record_id: str,
    record: dict[str, Any],
    error: str,
    attempts: int,
    first_failed_at: datetime,
) -> None:
    """One row per record: setting the same record aside again updates its row."""
    now = utcnow()
    values = {
        "kind": kind, "record_hash": record_hash(kind, record_id),
        "record_id": json.dumps(record_id), "record": json.dumps(record, default=str),
        "error": clean_error(error), "attempts": attempts,
        "first_failed_at": first_failed_at, "last_failed_at": now,
    }
    statement = _insert(session, _FAILURES).values(**values).on_conflict_do_update(
        index_elements=["record_hash"],
        set_={"error": values["error"], "attempts": attempts, "last_failed_at": now})
    await session.execute(statement)


def record_of(row: FlushFailure) -> tuple[str, dict[str, Any]]:
    """(record id, record) as the flusher read them from Redis."""
    record_id: str = json.loads(row.record_id)
    record: dict[str, Any] = json.loads(row.record)
    return record_id, record


async def list_failures(session: AsyncSession, *, limit: int = 1000) -> list[FlushFailure]:
    query = select(FlushFailure).order_by(FlushFailure.id).limit(limit)
    return list((await session.scalars(query)).all())


async def get_failure(session: AsyncSession, failure_id: int) -> FlushFailure | None:
    return await session.get(FlushFailure, failure_id)


async def delete_failure(session: AsyncSession, failure_id: int) -> None:
    await session.execute(delete(FlushFailure).where(FlushFailure.id == failure_id))


async def retry_failed(session: AsyncSession, failure_id: int, error: str) -> None:
    """An operator's retry was refused again: count it and keep the newest error."""
    await session.execute(
        update(FlushFailure).where(FlushFailure.id == failure_id).values(
            attempts=FlushFailure.attempts + 1, error=clean_error(error),
            last_failed_at=utcnow()))
