"""Moving finished jobs and ledger entries from Redis into SQL, and reading them back.

Every write is INSERT ... ON CONFLICT (id) DO NOTHING: the flusher may write the same job
or ledger entry again after a crash, and the second write must change nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, and_, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service.history.models import JobLog, LedgerEntry, User, utcnow

_JOBS = cast(Table, JobLog.__table__)
_LEDGER = cast(Table, LedgerEntry.__table__)
_USERS = cast(Table, User.__table__)

# SQLite allows 32766 bound parameters per statement, PostgreSQL 65535: stay below both.
_MAX_PARAMS = 30_000


def ms_to_datetime(value: str | int | None) -> datetime | None:
    if value is None or value == "":
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def _insert(session: AsyncSession, table: Table) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"unsupported SQL dialect {dialect!r}")


async def _insert_new(session: AsyncSession, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """Inserts rows whose id is not there yet; returns how many were added.

    One cached statement run with many parameter sets: SQLAlchemy turns it into batched
    multi-row INSERTs ("insertmanyvalues") without compiling a new statement per batch.
    """
    if not rows:
        return 0
    statement = (
        _insert(session, table)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(table.c.id)  # rowcount is not reliable for this on every driver
    )
    result = await session.execute(statement, list(rows))
    return len(result.all())


async def upsert_jobs(session: AsyncSession, rows: list[dict[str, Any]]) -> int:
    return await _insert_new(session, _JOBS, rows)


def ledger_row(entry: dict[str, Any]) -> dict[str, Any]:
    """A ledger entry as the Lua scripts write it (`at` in ms) as a credit_ledger row."""
    at = entry["at"]
    return {
        "id": str(entry["id"]),
        "user_id": str(entry["user_id"]),
        "kind": str(entry["kind"]),
        "amount": int(entry["amount"]),
        "job_id": entry.get("job_id") or None,
        "reason": entry.get("reason") or None,
        "at": at if isinstance(at, datetime) else ms_to_datetime(int(at)),
    }


async def insert_ledger(session: AsyncSession, entries: list[dict[str, Any]]) -> int:
    rows = [ledger_row(entry) for entry in entries]
    # A batch may repeat an id (a retried script pushed it twice): keep the first.
    unique = list({row["id"]: row for row in reversed(rows)}.values())[::-1]
    return await _insert_new(session, _LEDGER, unique)


def _item_rows(items_state: dict[str, str], meta_json: str, total: int) -> list[dict[str, Any]]:
    try:
        meta = json.loads(meta_json) if meta_json else []
    except ValueError:
        meta = []
    if not isinstance(meta, list):
        meta = []
    rows = []
    for index in range(total):
        described = meta[index] if index < len(meta) and isinstance(meta[index], dict) else {}
        row: dict[str, Any] = {
            "index": index,
            "name": described.get("name"),
            "content_type": described.get("content_type"),
            "size": described.get("size"),
            "status": "pending",
        }
        outcome = items_state.get(str(index))
        if outcome is not None:
            status, _, detail = outcome.partition(":")
            row["status"] = status
            row["output_key" if status == "ok" else "error"] = detail
        rows.append(row)
    return rows


def job_row_from_redis(
    job: dict[str, str], items_state: dict[str, str], meta_json: str
) -> dict[str, Any]:
    """A jobs_log row from the job hash, its items hash and its meta JSON.

    Items never reported (a canceled or expired job) keep the status 'pending'.
    """
    total = int(job.get("total") or 0)
    created_at = ms_to_datetime(job.get("created_at")) or utcnow()
    return {
        "id": job["id"],
        "user_id": job["owner"],
        "state": job["state"],
        "total_items": total,
        "done_items": int(job.get("done") or 0),
        "failed_items": int(job.get("failed") or 0),
        "price": int(job.get("price") or 0),
        "cost": int(job.get("cost") or 0),
        "charged": int(job.get("charged") or 0),
        "refunded": int(job.get("refunded") or 0),
        "rule_id": job.get("rule_id") or None,
        "items": _item_rows(items_state, meta_json, total),
        "reason": job.get("reason") or None,
        "created_at": created_at,
        "updated_at": ms_to_datetime(job.get("updated_at")) or created_at,
        "started_at": ms_to_datetime(job.get("started_at")),
        "finished_at": ms_to_datetime(job.get("finished_at")),
    }


async def ensure_user_row(session: AsyncSession, user_id: str, plan: str) -> None:
    """Inserts the user unless it exists; the caller commits."""
    statement = _insert(session, _USERS).values(
        id=user_id, plan=plan, created_at=utcnow()
    ).on_conflict_do_nothing(index_elements=["id"])
    await session.execute(statement)


async def set_user_plan(session: AsyncSession, user_id: str, plan: str) -> None:
    """Sets the plan, creating the row if the user was provisioned before SQL knew it."""
    statement = _insert(session, _USERS).values(id=user_id, plan=plan, created_at=utcnow())
    statement = statement.on_conflict_do_update(index_elements=["id"], set_={"plan": plan})
    await session.execute(statement)


async def history_job(session: AsyncSession, user_id: str, job_id: str) -> JobLog | None:
    """A finished job of this user; another user's job is simply not there."""
    row = await session.get(JobLog, job_id)
    return row if row is not None and row.user_id == user_id else None


async def history_page(
    session: AsyncSession,
    user_id: str,
    *,
    limit: int,
    before: tuple[datetime, str] | None = None,
    state: str | None = None,
) -> list[JobLog]:
    """Newest first; `before` is the (created_at, id) of the last row of the previous page."""
    query = select(JobLog).where(JobLog.user_id == user_id)
    if state is not None:
        query = query.where(JobLog.state == state)
    if before is not None:
        at, job_id = before
        query = query.where(
            or_(JobLog.created_at < at, and_(JobLog.created_at == at, JobLog.id < job_id))
        )
    query = query.order_by(JobLog.created_at.desc(), JobLog.id.desc()).limit(limit)
    return list((await session.scalars(query)).all())

