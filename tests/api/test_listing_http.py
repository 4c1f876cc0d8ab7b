"""GET /jobs over real HTTP on Redis and PostgreSQL: live and history pages merge newest
first without gaps or repeats, and a page reads only the live jobs it returns."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from service.history.engine import make_engine
from service.history.queries import upsert_jobs
from service.jobs.views import encode_cursor
from service.state.keys import KeySpace
from service.state.plans import Plan
from service.state.store import Core
from tests.api.conftest import Api

META = json.dumps([{"name": "a.png", "content_type": "image/png", "size": 100}])
T0 = datetime(2026, 6, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


def keyspace(api: Api) -> KeySpace:
    return KeySpace(api.settings.key_prefix, api.settings.buckets)


async def live_jobs(api: Api, real_redis: Any, user: str, at_ms: list[int]) -> list[str]:
    """Live jobs created at these times (ms), through the reserve script itself."""
    core = Core(real_redis, keyspace(api))
    await core.ensure_user(user, Plan("big", rule_slots=2, concurrency=len(at_ms) + 1), 10**6)
    ids = []
    for at in at_ms:
        job_id = core.keys.new_job_id(user)
        await core.reserve(job_id=job_id, user_id=user, total=1, price=1,
                           hold_ttl_ms=3_600_000, meta_json=META, at_ms=at)
        ids.append(job_id)
    return ids


async def history_jobs(api: Api, user: str, at_ms: list[int], state: str = "done"
                       ) -> list[str]:
    rows, ids = [], []
    for at in at_ms:
        job_id = keyspace(api).new_job_id(user)
        when = T0 + timedelta(milliseconds=at - T0_MS)
        rows.append({"id": job_id, "user_id": user, "state": state, "total_items": 1,
                     "done_items": 1, "failed_items": 0, "price": 1, "cost": 1, "charged": 1,
                     "refunded": 0, "rule_id": None, "items": [], "reason": None,
                     "created_at": when, "updated_at": when, "started_at": when,
                     "finished_at": when})
        ids.append(job_id)
    engine = make_engine(api.settings.database_url)
    try:
        async with engine.begin() as connection:
            from sqlalchemy.ext.asyncio import AsyncSession

            async with AsyncSession(bind=connection) as session:
                await upsert_jobs(session, rows)
    finally:
        await engine.dispose()
    return ids


async def walk(api: Api, user: str, limit: int, **params: Any) -> tuple[list[str], int]:
    """Every job id GET /jobs hands out, page by page, and how many pages it took."""
    seen: list[str] = []
    cursor, pages = None, 0
    while True:
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        response = await api.client.get("/jobs", params=query, headers=api.auth(user))
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [job["id"] for job in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages
        assert pages < 200


def newest_first(ids_at: dict[str, int]) -> list[str]:
    return sorted(ids_at, key=lambda job_id: (ids_at[job_id], job_id), reverse=True)


async def test_pages_merge_live_and_history_newest_first_across_equal_times(
        api: Api, real_redis: Any) -> None:
    user = api.user()
    # Bursts within one millisecond on both sides, interleaved in time.
    live_at = [T0_MS + 10 * (n // 3) for n in range(23)]
    hist_at = [T0_MS + 5 + 10 * (n // 4) for n in range(17)] + [T0_MS] * 3
    live = await live_jobs(api, real_redis, user, live_at)
    history = await history_jobs(api, user, hist_at)
    expected = newest_first({**dict(zip(live, live_at, strict=True)),
                             **dict(zip(history, hist_at, strict=True))})
    for limit in (1, 4, 7, 50):
        seen, _ = await walk(api, user, limit)
        assert seen == expected, limit


async def test_a_status_filter_pages_live_and_history(api: Api, real_redis: Any) -> None:
    user = api.user()
    live = await live_jobs(api, real_redis, user, [T0_MS + n for n in range(30)])
    canceled_hist = await history_jobs(api, user, [T0_MS + 100 + n for n in range(5)],
                                       state="canceled")
    await history_jobs(api, user, [T0_MS + 200 + n for n in range(5)], state="done")
    for job_id in live[:6]:  # the oldest six live jobs are canceled, still in Redis
        response = await api.client.post(f"/jobs/{job_id}/cancel", headers=api.auth(user))
        assert response.status_code == 200, response.text
    seen, pages = await walk(api, user, 2, status="canceled")
    assert sorted(seen) == sorted(live[:6] + canceled_hist) and len(set(seen)) == len(seen)
    assert pages > 1
    created, _ = await walk(api, user, 10, status="created")
    assert created == list(reversed(live[6:]))
    done, _ = await walk(api, user, 3, status="done")
    assert len(done) == 5


@contextmanager
def redis_commands(url: str, prefix: str) -> Iterator[list[list[str]]]:
    """The commands Redis runs on this test's keys while the block runs (MONITOR)."""
    seen: list[list[str]] = []
    marker = f"end-{uuid.uuid4().hex}"
    connection = redis.Redis.from_url(url, decode_responses=True)
    started = threading.Event()

    def listen() -> None:
        with connection.monitor() as monitor:
            started.set()
            for event in monitor.listen():
                command = str(event["command"])
                if marker in command:
                    return
                if f"{prefix}:" in command:
                    seen.append(command.split())

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    started.wait(5)
    try:
        yield seen
    finally:
        redis.Redis.from_url(url).echo(marker)
        thread.join(10)
        connection.close()


async def test_a_page_reads_only_the_live_jobs_it_returns(api: Api, real_redis: Any) -> None:
    user = api.user()
    await live_jobs(api, real_redis, user, [T0_MS + n for n in range(300)])
    await api.client.get("/jobs", params={"limit": 5}, headers=api.auth(user))  # warm
    with redis_commands(api.settings.redis_url, api.settings.key_prefix) as commands:
        response = await api.client.get("/jobs", params={"limit": 5}, headers=api.auth(user))
        assert response.status_code == 200 and len(response.json()["items"]) == 5
        cursor = encode_cursor(T0_MS + 150, "zzzzzzzzzzzzzzzzzzzzzzzzzz-0")
        deeper = await api.client.get("/jobs", params={"limit": 5, "cursor": cursor},
                                      headers=api.auth(user))
        assert deeper.status_code == 200, deeper.text
    assert deeper.json()["items"][0]["created_at"].startswith("2026-06-01T00:00:00.150")
    hashes = [c for c in commands if c[0].strip('"').upper() == "HGETALL"]
    assert 0 < len(hashes) <= 2 * 6, len(hashes)  # a page of 5 and the one after it
