"""GET /jobs at O(page): the first page of a user with 10, 1,000 and 10,000 live jobs, and
page 1 against a deep page of SQL history, on the real Redis and PostgreSQL.

    python -m bench.listing [--quick] [--history-rows 25000] [--page-size 20]

Targets (issue 12): page 1 with 10,000 live jobs takes at most 2x page 1 with 10; page
1,000 of history takes at most 2x page 1. Prints the ratios (time / baseline time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/listing.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_POSTGRES_DSN, base_parser, fresh_prefix, run
from bench.stack import Database, Stack, delete_run_keys

LIVE_SIZES = (10, 1_000, 10_000)


logging.getLogger("httpx").setLevel(logging.WARNING)


async def timed_gets(client: Any, calls: dict[str, tuple[str, dict[str, str]]], repeat: int
                     ) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Median milliseconds of each named GET, and its last answer: the calls take turns
    round after round (after a warm-up round), so that no one of them gets the cold start."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    bodies: dict[str, dict[str, Any]] = {}
    for attempt in range(repeat + 1):
        for name, (url, headers) in calls.items():
            started = time.perf_counter()
            response = await client.get(url, headers=headers)
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status_code == 200, response.text
            bodies[name] = response.json()
            if attempt:
                samples[name].append(elapsed)
    return {name: statistics.median(values) for name, values in samples.items()}, bodies


async def add_live_jobs(core: Any, user_id: str, count: int) -> None:
    from service.state.plans import Plan

    await core.ensure_user(user_id, Plan("bench", rule_slots=2, concurrency=count + 1), 10**9)
    meta = json.dumps([{"name": "a.png", "content_type": "image/png", "size": 100}])
    for start in range(0, count, 500):
        await asyncio.gather(*(core.reserve(
            job_id=core.keys.new_job_id(user_id), user_id=user_id, total=1, price=1,
            hold_ttl_ms=3_600_000, meta_json=meta) for _ in range(start, min(count, start + 500))))


async def add_history(sessions: Any, keys: Any, user_id: str, count: int) -> None:
    from sqlalchemy import text

    from service.history.queries import upsert_jobs

    start = datetime(2026, 1, 1, tzinfo=UTC)
    states = ("done", "failed", "canceled")
    for first in range(0, count, 5_000):
        rows = []
        for n in range(first, min(count, first + 5_000)):
            at = start + timedelta(seconds=n)
            rows.append({
                "id": keys.new_job_id(user_id), "user_id": user_id, "state": states[n % 3],
                "total_items": 1, "done_items": 1, "failed_items": 0, "price": 1, "cost": 1,
                "charged": 1, "refunded": 0, "rule_id": None, "items": [], "reason": None,
                "created_at": at, "updated_at": at, "started_at": at, "finished_at": at})
        async with sessions() as session, session.begin():
            await upsert_jobs(session, rows)
    async with sessions() as session, session.begin():  # as autovacuum would, in time
        await session.execute(text("ANALYZE jobs_log"))


async def history_cursor(sessions: Any, user_id: str, rows_before: int) -> str:
    """The cursor GET /jobs hands out after `rows_before` rows (newest first)."""
    from sqlalchemy import select

    from service.api.jobs import encode_cursor
    from service.history.models import JobLog
    from service.state.records import datetime_to_ms

    async with sessions() as session:
        row = (await session.execute(
            select(JobLog.created_at, JobLog.id).where(JobLog.user_id == user_id)
            .order_by(JobLog.created_at.desc(), JobLog.id.desc())
            .offset(rows_before - 1).limit(1))).one()
    return encode_cursor(datetime_to_ms(row[0]), row[1])


async def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--postgres", default=os.environ.get("TOLLGATE_TEST_POSTGRES",
                                                             DEFAULT_POSTGRES_DSN))
    parser.add_argument("--page-size", type=int, default=20)
    parser.add_argument("--history-rows", type=int, default=25_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    history_rows = 3_000 if args.quick else args.history_rows
    repeat = 5 if args.quick else args.repeat
    deep_page = max(2, min(1_000, history_rows // args.page_size - 1))

    from litestar.testing import AsyncTestClient

    from service.api.app import create_app
    from service.api.auth import issue_token
    from service.history.engine import run_migrations
    from service.runtime import open_runtime

    database = Database(args.postgres)
    database.create()
    stack = Stack(args.redis_url, database, args.prefix or fresh_prefix())
    try:
        run_migrations(database.url)
        settings = stack.settings(buckets=16)
        app = create_app(settings)
        # The test client serves the app on a loop of its own: seed through another runtime.
        rt = await open_runtime(stack.settings(buckets=16, redis_autopipeline=False), stack.secret)
        async with AsyncTestClient(app) as client:
            page = f"/jobs?limit={args.page_size}"
            calls: dict[str, tuple[str, dict[str, str]]] = {}
            for size in LIVE_SIZES:
                user = f"live{size}-{uuid.uuid4().hex[:6]}"
                await add_live_jobs(rt.core, user, size)
                token = issue_token(stack.secret, user)
                calls[str(size)] = (page, {"Authorization": f"Bearer {token}"})
            user = f"hist-{uuid.uuid4().hex[:6]}"
            await add_history(rt.sessions, rt.core.keys, user, history_rows)
            auth = {"Authorization": f"Bearer {issue_token(stack.secret, user)}"}
            cursor = await history_cursor(rt.sessions, user, (deep_page - 1) * args.page_size)
            calls["first"] = (page, auth)
            calls["deep"] = (f"{page}&cursor={cursor}", auth)
            ms, bodies = await timed_gets(client, calls, repeat)
            for size in LIVE_SIZES:
                assert len(bodies[str(size)]["items"]) == min(size, args.page_size)
            assert len(bodies["deep"]["items"]) == args.page_size
            live_ms = {size: ms[str(size)] for size in LIVE_SIZES}
            first_ms, deep_ms = ms["first"], ms["deep"]
        await rt.close()
    finally:
        await delete_run_keys(args.redis_url, stack.prefix)
        database.drop()
        stack.remove_storage()

    print(f"GET /jobs?limit={args.page_size}, median of {repeat} (ms), PostgreSQL + Redis")
    for size in LIVE_SIZES:
        ratio = live_ms[size] / live_ms[LIVE_SIZES[0]]
        print(f"  page 1, {size:>6,} live jobs: {live_ms[size]:8.2f} ms   "
              f"ratio to 10 live: {ratio:5.2f}")
    print(f"  history page 1 ({history_rows:,} rows):  {first_ms:8.2f} ms")
    print(f"  history page {deep_page:,}:              {deep_ms:8.2f} ms   "
          f"ratio to page 1: {deep_ms / first_ms:5.2f}")
    print(f"targets: 10,000 live <= 2x 10 live: "
          f"{'met' if live_ms[LIVE_SIZES[-1]] <= 2 * live_ms[LIVE_SIZES[0]] else 'MISSED'}; "
          f"page {deep_page:,} <= 2x page 1: {'met' if deep_ms <= 2 * first_ms else 'MISSED'}")


if __name__ == "__main__":
    run(main())
