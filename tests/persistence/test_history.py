"""History rows and ledger entries: idempotent inserts, batching, the Redis-to-row mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.history.models import JobLog, LedgerEntry, User
from service.history.queries import (
    ensure_user_row,
    history_job,
    history_page,
    insert_ledger,
    upsert_jobs,
)
from service.state.records import JobRecord
from service.state.records import LedgerEntry as RedisLedgerEntry

Sessions = async_sessionmaker[AsyncSession]
T0 = 1_764_130_000_000  # ms


def redis_job(job_id: str, owner: str = "ann", *, created_ms: int = T0, total: int = 3,
              state: str = "done") -> dict[str, str]:
    return {
        "id": job_id, "owner": owner, "state": state, "total": str(total), "done": "2",
        "failed": "1", "price": "1", "cost": str(total), "charged": "2", "refunded": "1",
        "created_at": str(created_ms), "updated_at": str(created_ms + 500),
        "started_at": str(created_ms + 100), "finished_at": str(created_ms + 500),
        "reason": "completed", "rule_id": "",
    }


def job_row_from_redis(job: dict[str, str], items: dict[str, str], meta: str) -> dict[str, Any]:
    record = JobRecord.from_redis(job, items, meta)
    assert record is not None
    return record.history_row()


def job_row(job_id: str, owner: str = "ann", created_ms: int = T0) -> dict[str, Any]:
    return job_row_from_redis(redis_job(job_id, owner, created_ms=created_ms), {}, "")


async def count(sessions: Sessions, model: type[Any]) -> int:
    async with sessions() as session:
        return int((await session.scalar(select(func.count()).select_from(model))) or 0)


def test_job_row_maps_the_redis_records() -> None:
    meta = json.dumps([{"name": f"f{i}.png", "content_type": "image/png", "size": 10 + i}
                       for i in range(3)])
    items = {"0": "ok:jobs/j/out/0", "2": "failed:boom: bad pixel"}
    row = job_row_from_redis(redis_job("j1"), items, meta)
    assert row["user_id"] == "ann"
    assert (row["total_items"], row["done_items"], row["failed_items"]) == (3, 2, 1)
    assert (row["cost"], row["charged"], row["refunded"]) == (3, 2, 1)
    assert row["rule_id"] is None
    assert row["created_at"] == datetime.fromtimestamp(T0 / 1000, tz=UTC)
    assert row["finished_at"] - row["created_at"] == timedelta(milliseconds=500)
    assert row["items"] == [
        {"index": 0, "name": "f0.png", "content_type": "image/png", "size": 10,
         "status": "ok", "output_key": "jobs/j/out/0"},
        {"index": 1, "name": "f1.png", "content_type": "image/png", "size": 11,
         "status": "pending"},
        {"index": 2, "name": "f2.png", "content_type": "image/png", "size": 12,
         "status": "failed", "error": "boom: bad pixel"},
    ]


def test_job_row_survives_missing_meta_and_times() -> None:
    job = redis_job("j2", state="canceled")
    del job["started_at"], job["finished_at"]
    row = job_row_from_redis(job, {}, "not json")
    assert row["started_at"] is None and row["finished_at"] is None
    assert [item["status"] for item in row["items"]] == ["pending"] * 3
    assert row["items"][0]["name"] is None


async def test_second_upsert_of_a_job_changes_nothing(sessions: Sessions) -> None:
    rows = [job_row(f"job-{i}") for i in range(5)]
    async with sessions() as session, session.begin():
        assert await upsert_jobs(session, rows) == 5
    changed = [dict(row, state="failed") for row in rows[:3]] + [job_row("job-new")]
    async with sessions() as session, session.begin():
        assert await upsert_jobs(session, changed) == 1
    assert await count(sessions, JobLog) == 6
    async with sessions() as session:
        assert (await session.get(JobLog, "job-0")).state == "done"  # type: ignore[union-attr]


@pytest.mark.slow  # 2,500 rows twice: over 3 s on PostgreSQL
async def test_large_batches_split_into_statements_and_all_land(sessions: Sessions) -> None:
    rows = [job_row(f"job-{i:05}", created_ms=T0 + i) for i in range(2500)]
    async with sessions() as session, session.begin():
        assert await upsert_jobs(session, rows) == 2500
    async with sessions() as session, session.begin():
        assert await upsert_jobs(session, rows) == 0
    assert await count(sessions, JobLog) == 2500


async def test_ledger_entries_insert_once_even_when_repeated(sessions: Sessions) -> None:
    entries = [RedisLedgerEntry.from_json(json.dumps(entry)).history_row() for entry in (
        {"id": "signup:ann", "user_id": "ann", "kind": "grant", "amount": 10, "reason": "signup",
         "at": T0},
        {"id": "j1:charge", "user_id": "ann", "kind": "charge", "amount": -2, "job_id": "j1",
         "at": T0 + 1},
    )]
    async with sessions() as session, session.begin():
        assert await insert_ledger(session, [*entries, entries[0]]) == 2
    async with sessions() as session, session.begin():
        assert await insert_ledger(session, entries) == 0
    async with sessions() as session:
        charge = await session.get(LedgerEntry, "j1:charge")
    assert charge is not None
    assert (charge.amount, charge.job_id, charge.reason) == (-2, "j1", None)
    assert charge.at == datetime.fromtimestamp((T0 + 1) / 1000, tz=UTC)
    assert await count(sessions, LedgerEntry) == 2


async def test_user_rows_are_created_once_and_plans_change(sessions: Sessions) -> None:
    from service.history.queries import set_user_plan

    async with sessions() as session, session.begin():
        await ensure_user_row(session, "ann", "free")
        await ensure_user_row(session, "ann", "pro")  # present: left alone
        await set_user_plan(session, "bob", "pro")  # unknown to SQL yet: created
    async with sessions() as session, session.begin():
        await set_user_plan(session, "ann", "pro")
    async with sessions() as session:
        plans = {row.id: row.plan for row in await session.execute(select(User.id, User.plan))}
    assert plans == {"ann": "pro", "bob": "pro"}


async def test_history_pages_newest_first_without_gaps_or_repeats(sessions: Sessions) -> None:
    # Two jobs share each created_at: the id must break the tie for the cursor.
    rows = [job_row(f"job-{i:02}", created_ms=T0 + (i // 2) * 1000) for i in range(9)]
    rows.append(job_row("other-user-job", owner="bob"))
    async with sessions() as session, session.begin():
        await upsert_jobs(session, rows)
    seen: list[str] = []
    before = None
    async with sessions() as session:
        while True:
            page = await history_page(session, "ann", limit=4, before=before)
            seen += [row.id for row in page]
            if len(page) < 4:
                break
            before = (page[-1].created_at, page[-1].id)
        assert await history_job(session, "ann", "other-user-job") is None
        assert await history_job(session, "bob", "other-user-job") is not None
        assert await history_page(session, "ann", limit=10, state="failed") == []
    assert seen == [f"job-{i:02}" for i in reversed(range(9))]
