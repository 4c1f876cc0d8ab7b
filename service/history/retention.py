"""Which finished jobs' files are due for deletion, and marking them deleted."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.history.models import JobLog, utcnow


async def results_due(session: AsyncSession, finished_before: datetime, limit: int) -> list[str]:
    """Jobs whose files are still there and due: with a TTL of their own, past their
    results_expire_at; else finished before the cutoff (the setting's TTL). Two range scans
    of partial indexes (ix_jobs_log_results_expire, ix_jobs_log_results_due)."""
    own = (select(JobLog.id)
           .where(JobLog.results_deleted_at.is_(None), JobLog.results_expire_at < utcnow())
           .order_by(JobLog.results_expire_at).limit(limit))
    default = (select(JobLog.id)
               .where(JobLog.results_deleted_at.is_(None), JobLog.results_expire_at.is_(None),
                      JobLog.finished_at < finished_before)
               .order_by(JobLog.finished_at).limit(limit))
    due = list((await session.scalars(own)).all())
    if len(due) < limit:
        due += (await session.scalars(default.limit(limit - len(due)))).all()
    return due


async def kept_inputs_due(session: AsyncSession, finished_before: datetime, limit: int
                          ) -> list[tuple[str, list[int]]]:
    """Jobs finished before the cutoff whose failed items' inputs are still kept for a
    retry: (job id, failed item indexes)."""
    query = (
        select(JobLog.id, JobLog.items)
        .where(JobLog.failed_items > 0, JobLog.inputs_deleted_at.is_(None),
               JobLog.results_deleted_at.is_(None), JobLog.finished_at < finished_before)
        .order_by(JobLog.finished_at)
        .limit(limit)
    )
    return [(job_id, failed_indexes(items)) for job_id, items in await session.execute(query)]


def failed_indexes(items: list[dict[str, Any]] | None) -> list[int]:
    return [int(item["index"]) for item in items or () if item.get("status") == "failed"]


async def mark_inputs_deleted(session: AsyncSession, job_ids: list[str]) -> None:
    if job_ids:
        await session.execute(
            update(JobLog).where(JobLog.id.in_(job_ids)).values(inputs_deleted_at=utcnow()))


async def mark_results_deleted(session: AsyncSession, job_ids: list[str]) -> None:
    if job_ids:
        await session.execute(
            update(JobLog).where(JobLog.id.in_(job_ids)).values(results_deleted_at=utcnow()))
