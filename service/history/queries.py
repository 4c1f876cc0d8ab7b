"""Moving finished jobs and ledger entries from Redis into SQL, and reading them back.

Every write is INSERT ... ON CONFLICT (id) DO NOTHING: the flusher may write the same job
or ledger entry again after a crash, and the second write must change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, literal, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service.history.models import JobLog, LedgerEntry, User, utcnow

_JOBS = cast(Table, JobLog.__table__)
_LEDGER = cast(Table, LedgerEntry.__table__)
_USERS = cast(Table, User.__table__)

# SQLite allows 32766 bound parameters per statement, PostgreSQL 65535: stay below both.
_MAX_PARAMS = 30_000


def _insert(session: AsyncSession, table: Table) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"unsupported SQL dialect {dialect!r}")


async def _insert_new(session: AsyncSession, table: Table, rows: Sequence[dict[str, Any]],
                      count: bool) -> int:
    """Inserts rows whose id is not there yet; returns how many were added (0 unless
    `count`).

    One cached statement run with many parameter sets. Counted, it takes RETURNING, and
    SQLAlchemy turns it into batched multi-row INSERTs ("insertmanyvalues"), each a new
    text psycopg parses again (its placeholders, one per column and row). Uncounted (the
    flusher's bulk writes), it is a plain executemany: one prepared statement, its rows
    sent in psycopg's pipeline mode, several times cheaper.
    """
    if not rows:
        return 0
    statement = _insert(session, table).on_conflict_do_nothing(index_elements=["id"])
    if not count:
        await session.execute(statement, list(rows))
        return 0
    # rowcount is not reliable for this on every driver
    result = await session.execute(statement.returning(table.c.id), list(rows))
    return len(result.all())


async def upsert_jobs(session: AsyncSession, rows: list[dict[str, Any]], *,
                      count: bool = True) -> int:
    return await _insert_new(session, _JOBS, rows, count)


async def insert_ledger(session: AsyncSession, rows: list[dict[str, Any]], *,
                        count: bool = True) -> int:
    """credit_ledger rows (service.state.records.LedgerEntry.history_row)."""
    # A batch may repeat an id (a retried script pushed it twice): keep the first.
    unique = list({row["id"]: row for row in reversed(rows)}.values())[::-1]
    return await _insert_new(session, _LEDGER, unique, count)


async def ensure_user_row(session: AsyncSession, user_id: str, plan: str) -> bool:
    """Inserts the user unless it exists; True when this call inserted it. The caller
    commits."""
    statement = _insert(session, _USERS).values(
        id=user_id, plan=plan, created_at=utcnow()
    ).on_conflict_do_nothing(index_elements=["id"]).returning(_USERS.c.id)
    return (await session.execute(statement)).first() is not None


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
    query = history_page_query(user_id, limit=limit, before=before, state=state)
    return list((await session.scalars(query)).all())


def history_page_query(user_id: str, *, limit: int, before: tuple[datetime, str] | None,
                       state: str | None) -> Select[JobLog]:
    query = select(JobLog).where(JobLog.user_id == user_id)
    if state is not None:
        query = query.where(JobLog.state == state)
    if before is not None:
        # The row-value form, so that the cursor is an index condition on
        # ix_jobs_log_user_created (or ix_jobs_log_user_state_created), not a filter.
        at, job_id = before
        query = query.where(tuple_(JobLog.created_at, JobLog.id) < tuple_(
            literal(at, JobLog.created_at.type), literal(job_id, JobLog.id.type)))
    return query.order_by(JobLog.created_at.desc(), JobLog.id.desc()).limit(limit)

