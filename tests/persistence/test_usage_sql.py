"""The usage statement's SQL (service.history.usage) on SQLite and PostgreSQL: sums by UTC
day, model and key against the rows summed in Python, whatever the session's time zone; and
on PostgreSQL, a 31-day statement is an index range on ix_jobs_log_user_finished, chosen by
the planner on a table of 20,000 rows (bench/usage_statement.py measures it on 1 million)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench.usage_statement import load_jobs
from service.history.engine import sync_url
from service.history.queries import upsert_jobs
from service.history.usage import statement_query, usage_statement

DAY = date(2026, 3, 10)
MIDNIGHT = datetime(2026, 3, 10, tzinfo=UTC)


def job(job_id: str, finished: datetime | None, *, user: str = "u1", items: int = 2,
        done: int = 2, model: str | None = "thumbnail") -> dict[str, Any]:
    at = finished or MIDNIGHT
    return {"id": job_id, "user_id": user, "state": "done", "total_items": items,
            "done_items": done, "failed_items": items - done, "price": 1, "cost": items,
            "charged": done, "refunded": items - done, "rule_id": None, "model": model,
            "items": [], "reason": None, "created_at": at, "updated_at": at,
            "started_at": at, "finished_at": finished}


ROWS = [
    job("a", MIDNIGHT - timedelta(microseconds=1)),  # the last instant of 9 March
    job("b", MIDNIGHT, items=3, done=1),  # the first of 10 March
    job("c", MIDNIGHT + timedelta(hours=23, minutes=59), model="caption"),
    job("d", MIDNIGHT + timedelta(days=1), model=None, items=5, done=5),
    job("e", MIDNIGHT + timedelta(days=2)),  # after the range asked for
    job("f", MIDNIGHT + timedelta(hours=1), user="u2", items=7, done=7),  # another user
    job("g", None),  # never finished (a job lost with Redis): in no statement
]


async def test_sums_by_day_model_and_key_in_any_session_time_zone(
        sessions: async_sessionmaker[AsyncSession], database_url: str) -> None:
    async with sessions() as session, session.begin():
        await upsert_jobs(session, ROWS)
    first, last = DAY - timedelta(days=1), DAY + timedelta(days=1)
    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for row in ROWS:
        if row["user_id"] == "u1" and row["finished_at"] is not None \
                and row["finished_at"].date() <= last:
            sums = expected[row["finished_at"].date().isoformat()]
            for n, value in enumerate((1, row["total_items"], row["charged"],
                                       row["refunded"])):
                sums[n] += value
    async with sessions() as session:
        if database_url.startswith("postgresql"):
            # A job belongs to its UTC day even where the connection's zone says otherwise.
            await session.execute(text("SET TIME ZONE 'Pacific/Kiritimati'"))
        by_day = await usage_statement(session, "u1", first, last, "day")
        by_model = await usage_statement(session, "u1", first, last, "model")
        by_key = await usage_statement(session, "u1", first, last, "key")
        everyone = await usage_statement(session, None, DAY, DAY, "day")
    assert {row.period: [row.jobs, row.items, row.charged, row.refunded]
            for row in by_day.rows} == expected
    assert [row.period for row in by_day.rows] == ["2026-03-09", "2026-03-10", "2026-03-11"]
    assert [(row.model, row.jobs, row.charged) for row in by_model.rows] == [
        (None, 1, 5), ("caption", 1, 2), ("thumbnail", 2, 3)]
    assert [(row.key_id, row.jobs, row.items) for row in by_key.rows] == [(None, 4, 12)]
    assert by_day.totals == by_model.totals == by_key.totals == {
        "jobs": 4, "items": 12, "charged": 10, "refunded": 2}
    assert [(row.period, row.jobs, row.charged) for row in everyone.rows] == [
        ("2026-03-10", 3, 10)]


async def _plan(session: AsyncSession, user_id: str | None) -> dict[str, Any]:
    """EXPLAIN of the very query GET /me/usage runs: 31 days by day."""
    last = datetime.now(UTC).date()
    query = statement_query(user_id, last - timedelta(days=30), last, "day")
    compiled = query.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    result = await session.execute(text(f"EXPLAIN (FORMAT JSON) {compiled}"))
    plan: dict[str, Any] = result.scalar()[0]["Plan"]
    return plan


def _scan(plan: dict[str, Any]) -> dict[str, Any]:
    while "Index Cond" not in plan and "Plans" in plan:
        plan = plan["Plans"][0]
    return plan


async def test_a_31_day_statement_is_an_index_range_on_postgresql(
        sessions: async_sessionmaker[AsyncSession], database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        return  # SQLite plans are not what production runs
    import psycopg

    with psycopg.connect(sync_url(database_url).replace("+psycopg", ""),
                         autocommit=True) as conn:
        load_jobs(conn, 20_000, datetime.now(UTC))
        conn.execute("VACUUM ANALYZE jobs_log")
    async with sessions() as session:
        scan = _scan(await _plan(session, "u7"))
        everyone = _scan(await _plan(session, None))
    # The planner's own choice (nothing is turned off): the user and the 31 days bound
    # the range; nothing is left to filter row by row, and the table is not read.
    assert scan.get("Index Name") == "ix_jobs_log_user_finished", json.dumps(scan)
    assert "user_id" in scan["Index Cond"] and "finished_at >=" in scan["Index Cond"], scan
    assert "finished_at <" in scan["Index Cond"] and "Filter" not in scan, scan
    assert scan["Node Type"] == "Index Only Scan", scan
    assert everyone.get("Index Name") == "ix_jobs_log_finished", json.dumps(everyone)
