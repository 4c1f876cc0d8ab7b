"""Which finished jobs' files are due for deletion, and marking them deleted."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.history.models import JobLog, utcnow


async def results_due(session: AsyncSession, finished_before: datetime, limit: int) -> list[str]:
    """Jobs finished before the cutoff whose files are still there, oldest first (one range
    scan of the partial index ix_jobs_log_results_due)."""
    query = (
        select(JobLog.id)
        .where(JobLog.results_deleted_at.is_(None), JobLog.finished_at < finished_before)
        .order_by(JobLog.finished_at)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def mark_results_deleted(session: AsyncSession, job_ids: list[str]) -> None:
    if job_ids:
        await session.execute(
            update(JobLog).where(JobLog.id.in_(job_ids)).values(results_deleted_at=utcnow()))
