"""The history page query: exact pages across equal timestamps (SQLite and PostgreSQL), and on
PostgreSQL the cursor and the status filter as index conditions, never a filter over rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.history.queries import history_page, history_page_query, upsert_jobs

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def row(job_id: str, at: datetime, state: str = "done", user: str = "u1") -> dict[str, Any]:
    return {"id": job_id, "user_id": user, "state": state, "total_items": 1, "done_items": 1,
            "failed_items": 0, "price": 1, "cost": 1, "charged": 1, "refunded": 0,
            "rule_id": None, "items": [], "reason": None, "created_at": at, "updated_at": at,
            "started_at": at, "finished_at": at}


async def test_history_pages_are_exact_across_equal_times(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    rows = [row(f"job{n:03d}", T0 + timedelta(milliseconds=n // 4),
                ("done", "failed")[n % 2]) for n in range(40)]
    rows.append(row("other", T0, user="u2"))
    async with sessions() as session, session.begin():
        await upsert_jobs(session, rows)
    for state in (None, "failed"):
        expected = sorted((r for r in rows if r["user_id"] == "u1"
                           and state in (None, r["state"])),
                          key=lambda r: (r["created_at"], r["id"]), reverse=True)
        seen: list[str] = []
        before = None
        async with sessions() as session:
            while True:
                page = await history_page(session, "u1", limit=3, before=before, state=state)
                seen += [job.id for job in page]
                if len(page) < 3:
                    break
                before = (page[-1].created_at, page[-1].id)
        assert seen == [r["id"] for r in expected]


async def _plan(session: AsyncSession, state: str | None) -> str:
    """EXPLAIN of the very query history_page runs, for a cursor deep in the history."""
    query = history_page_query("u1", limit=21, state=state,
                               before=(T0 + timedelta(seconds=500), "job0500"))
    compiled = query.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    result = await session.execute(text(f"EXPLAIN (FORMAT JSON) {compiled}"))
    return json.dumps(result.scalar())


async def test_the_cursor_and_the_status_are_index_conditions_on_postgresql(
        sessions: async_sessionmaker[AsyncSession], database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        return  # SQLite plans are not what production runs
    async with sessions() as session, session.begin():
        await upsert_jobs(session, [row(f"job{n:04d}", T0 + timedelta(seconds=n),
                                        ("done", "failed", "canceled")[n % 3])
                                    for n in range(3000)])
    async with sessions() as session, session.begin():
        await session.execute(text("ANALYZE jobs_log"))
        await session.execute(text("SET LOCAL enable_seqscan = off"))
        await session.execute(text("SET LOCAL enable_sort = off"))
        plain, filtered = await _plan(session, None), await _plan(session, "failed")
    assert '"Index Name": "ix_jobs_log_user_created"' in plain, plain
    assert '"Index Name": "ix_jobs_log_user_state_created"' in filtered, filtered
    for plan in (plain, filtered):
        index_cond = json.loads(plan)[0]["Plan"]
        while "Index Cond" not in index_cond:
            index_cond = index_cond["Plans"][0]
        assert "ROW(created_at, (id)::text) < ROW(" in index_cond["Index Cond"], index_cond
        assert "Filter" not in index_cond, index_cond
