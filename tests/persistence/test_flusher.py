"""The flusher against real Redis and real SQL (SQLite file and PostgreSQL).

The crash tests stop a pass between two of its steps by making the next step raise, then
run a fresh pass and check that every row is in SQL exactly once and no Redis key is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import service.flusher.dead_letters as dead_letters
import service.flusher.loop as flusher
from service.errors import InvalidTransition
from service.flusher.bucket import FlushStats
from service.flusher.loop import flush_once, run_flusher
from service.history.models import JobLog, LedgerEntry
from service.settings import Settings
from service.state.due import DueIndex
from service.state.keys import KeySpace
from service.state.plans import PLANS
from service.state.store import Core
from tests.persistence.conftest import BUCKETS

pytestmark = pytest.mark.redis

Sessions = async_sessionmaker[AsyncSession]
LONG_MS = 600_000
START_CREDITS = 100


class Crash(Exception):
    """Stands in for the flusher process dying at this point."""


def settings_for(key_prefix: str, database_url: str = "sqlite://", **extra: Any) -> Settings:
    return Settings(key_prefix=key_prefix, buckets=BUCKETS, flush_delay=0, flush_batch=50,
                    database_url=database_url, **extra)


async def new_user(core: Core, user_id: str) -> None:
    await core.ensure_user(user_id, PLANS["pro"], START_CREDITS)


async def new_job(core: Core, user_id: str, total: int = 3, hold_ttl_ms: int = LONG_MS) -> str:
    job_id = core.keys.new_job_id(user_id)
    meta = json.dumps([{"name": f"f{i}.png", "content_type": "image/png", "size": 100 + i}
                       for i in range(total)])
    await core.reserve(job_id=job_id, user_id=user_id, total=total, price=1,
                       hold_ttl_ms=hold_ttl_ms, meta_json=meta)
    return job_id


async def start(core: Core, job_id: str, user_id: str, lease_ms: int = LONG_MS) -> None:
    await core.transition(job_id, "created", "uploaded", owner=user_id)
    await core.transition(job_id, "uploaded", "queued", owner=user_id)
    await core.transition(job_id, "queued", "running", owner=user_id, lease_ms=lease_ms)


async def report(core: Core, job_id: str, user_id: str, index: int, ok: bool,
                 lease_ms: int = LONG_MS) -> None:
    await core.item_result(job_id, user_id, callback_key=f"{job_id}-cb-{index}", index=index,
                           ok=ok, detail=f"jobs/{job_id}/out/{index}" if ok else "boom",
                           lease_ms=lease_ms, flush_delay_ms=0)


async def finished_job(core: Core, user_id: str, outcomes: tuple[bool, ...]) -> str:
    job_id = await new_job(core, user_id, total=len(outcomes))
    await start(core, job_id, user_id)
    for index, ok in enumerate(outcomes):
        await report(core, job_id, user_id, index, ok)
    return job_id


async def sql_counts(sessions: Sessions) -> tuple[int, int]:
    async with sessions() as session:
        jobs = await session.scalar(select(func.count()).select_from(JobLog))
        ledger = await session.scalar(select(func.count()).select_from(LedgerEntry))
    return int(jobs or 0), int(ledger or 0)


async def sql_job_ids(sessions: Sessions) -> set[str]:
    async with sessions() as session:
        return set((await session.scalars(select(JobLog.id))).all())


async def redis_keys(client: Any, key_prefix: str) -> set[str]:
    """The keys left, without the ones kept for good: the business counters of each bucket
    and the set of buckets in use (what a metrics scrape reads)."""
    keys = KeySpace(key_prefix, BUCKETS)
    kept = {keys.buckets_in_use, *(keys.bucket(b).counters for b in range(BUCKETS))}
    return {key async for key in client.scan_iter(match=f"{key_prefix}:*", count=1000)} - kept


def user_hashes(core: Core, *users: str) -> set[str]:
    """What stays of a user once its jobs are flushed: its hash and its grants (signup)."""
    return {key for user in users
            for key in (core.keys.user(user).base, core.keys.user(user).grants)}


async def three_finished_jobs(core: Core) -> list[str]:
    """ann: a done job (2 of 3 ok) and a canceled one; bob: a job whose every item failed.

    Ledger: 2 signups, then a hold and a release per job and the done job's charge.
    """
    await new_user(core, "ann")
    await new_user(core, "bob")
    done = await finished_job(core, "ann", (True, True, False))
    failed = await finished_job(core, "bob", (False, False))
    canceled = await new_job(core, "ann", total=4)
    await core.cancel(canceled, "ann", reason="user", flush_delay_ms=0)
    return [done, failed, canceled]


EXPECTED_LEDGER = 9


async def test_finished_jobs_and_ledger_land_in_sql_and_leave_redis(
    core: Core, sessions: Sessions, real_redis: Any, key_prefix: str, database_url: str
) -> None:
    done, failed, canceled = await three_finished_jobs(core)
    stats = await flush_once(core, sessions, settings_for(key_prefix))

    assert (stats.flushed_jobs, stats.ledger_entries) == (3, EXPECTED_LEDGER)
    assert await sql_counts(sessions) == (3, EXPECTED_LEDGER)
    assert await redis_keys(real_redis, key_prefix) == user_hashes(core, "ann", "bob")
    async with sessions() as session:
        row = await session.get(JobLog, done)
        assert row is not None
        assert (row.state, row.done_items, row.failed_items, row.charged, row.refunded) == (
            "done", 2, 1, 2, 1)
        assert [item["status"] for item in row.items] == ["ok", "ok", "failed"]
        assert row.items[0]["output_key"] == f"jobs/{done}/out/0"
        assert row.items[2]["name"] == "f2.png"
        assert row.started_at is not None and row.finished_at is not None
        states = {job_id: (await session.get(JobLog, job_id)).state  # type: ignore[union-attr]
                  for job_id in (failed, canceled)}
        charge = await session.get(LedgerEntry, f"charge:{done}")
        assert charge is not None and (charge.amount, charge.user_id) == (-2, "ann")
    assert states == {failed: "failed", canceled: "canceled"}

    assert not await flush_once(core, sessions, settings_for(key_prefix))  # nothing left


async def test_crash_before_the_sql_commit_writes_nothing_and_loses_nothing(
    core: Core, sessions: Sessions, real_redis: Any, key_prefix: str, database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await three_finished_jobs(core)

    async def crash(*_: Any, **__: Any) -> int:
        raise Crash

    # upsert_jobs runs, then the ledger insert dies inside the same transaction (an error
    # that is no refusal of a record: the pass fails, nothing is set aside).
    monkeypatch.setattr(dead_letters, "insert_ledger", crash)
    with pytest.raises(Crash):
        await flush_once(core, sessions, settings_for(key_prefix), claim_ms=1)
    assert await sql_counts(sessions) == (0, 0)
    monkeypatch.undo()

    await asyncio.sleep(0.01)  # let the 1 ms claims lapse, as a 30 s claim would
    await flush_once(core, sessions, settings_for(key_prefix))
    assert await sql_counts(sessions) == (3, EXPECTED_LEDGER)
    assert await redis_keys(real_redis, key_prefix) == user_hashes(core, "ann", "bob")


async def test_crash_after_the_commit_before_deleting_from_redis_duplicates_nothing(
    core: Core, sessions: Sessions, real_redis: Any, key_prefix: str, database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs = await three_finished_jobs(core)

    async def crash(*_: Any) -> Any:
        raise Crash

    monkeypatch.setattr(core, "flush_done", crash)
    with pytest.raises(Crash):
        await flush_once(core, sessions, settings_for(key_prefix), claim_ms=1)
    monkeypatch.undo()
    in_sql = await sql_job_ids(sessions)
    assert in_sql  # the first bucket with work committed, then died
    for job_id in jobs:  # still in Redis: nothing was deleted before the crash
        assert await core.job_record(job_id)

    await asyncio.sleep(0.01)  # let the 1 ms claims lapse, as a 30 s claim would
    stats = await flush_once(core, sessions, settings_for(key_prefix))
    assert stats.flushed_jobs == 3
    assert await sql_counts(sessions) == (3, EXPECTED_LEDGER)
    assert await redis_keys(real_redis, key_prefix) == user_hashes(core, "ann", "bob")


async def test_crash_before_the_ledger_ack_duplicates_no_entry(
    core: Core, sessions: Sessions, real_redis: Any, key_prefix: str, database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs = await three_finished_jobs(core)

    async def crash(*_: Any) -> Any:
        raise Crash

    monkeypatch.setattr(core, "ledger_ack", crash)
    with pytest.raises(Crash):
        await flush_once(core, sessions, settings_for(key_prefix), claim_ms=1)
    monkeypatch.undo()
    in_sql = await sql_job_ids(sessions)
    assert in_sql
    in_redis = {job_id for job_id in jobs if await core.job_record(job_id)}
    assert set(jobs) - in_sql <= in_redis  # nothing lost: unflushed jobs are still in Redis
    assert in_sql - in_redis  # the crashing bucket deleted its jobs, then died at the ack
    ledger_in_sql = (await sql_counts(sessions))[1]

    await asyncio.sleep(0.01)
    stats = await flush_once(core, sessions, settings_for(key_prefix))
    assert stats.flushed_jobs == len(in_redis)
    # The crash hit the first acknowledgement, so every entry is read again; those already
    # in SQL are inserted as no-ops.
    assert ledger_in_sql > 0
    assert stats.ledger_entries == EXPECTED_LEDGER
    assert await sql_counts(sessions) == (3, EXPECTED_LEDGER)
    assert await redis_keys(real_redis, key_prefix) == user_hashes(core, "ann", "bob")


def users_in_buckets(core: Core, count: int) -> list[str]:
    """`count` user names, each in a bucket of its own."""
    found: dict[int, str] = {}
    for i in range(10_000):
        found.setdefault(core.keys.bucket_of_user(f"user-{i}"), f"user-{i}")
        if len(found) == count:
            return list(found.values())
    raise AssertionError("not enough buckets")


async def test_a_pass_writes_the_rows_of_every_due_bucket_in_one_transaction(
    core: Core, sessions: Sessions, real_redis: Any, key_prefix: str, database_url: str,
) -> None:
    """Batching: 24 finished jobs over 8 buckets reach SQL in one transaction, not one a
    bucket (the pass's cost is then its one commit, not 8); a second pass commits none."""
    users = users_in_buckets(core, 8)
    for user in users:
        await new_user(core, user)
        for _ in range(3):
            await finished_job(core, user, (True, False))
    commits: list[int] = []
    engine = sessions.kw["bind"].sync_engine
    count = lambda *_: commits.append(1)  # noqa: E731
    event.listen(engine, "commit", count)
    try:
        stats = await flush_once(core, sessions, settings_for(key_prefix))
        assert (stats.flushed_jobs, len(commits)) == (24, 1)
        assert not await flush_once(core, sessions, settings_for(key_prefix))
        assert len(commits) == 1
    finally:
        event.remove(engine, "commit", count)
    # 8 signups, and a hold, a release and a charge a job
    assert await sql_counts(sessions) == (24, 8 + 3 * 24)
    assert await redis_keys(real_redis, key_prefix) == user_hashes(core, *users)


async def test_two_flushers_at_once_write_every_row_once(
    core: Core, sessions: Sessions, real_redis: Any, key_prefix: str, database_url: str,
) -> None:
    await new_user(core, "ann")
    for _ in range(12):
        await finished_job(core, "ann", (True, False))
    settings = settings_for(key_prefix)
    first, second = await asyncio.gather(flush_once(core, sessions, settings),
                                         flush_once(core, sessions, settings))
    assert first.flushed_jobs + second.flushed_jobs == 12
    # 1 signup + a hold, a release and a charge per job; both flushers may read the same
    # entries.
    assert await sql_counts(sessions) == (12, 37)
    await flush_once(core, sessions, settings)  # whatever a lost ack left behind
    assert await sql_counts(sessions) == (12, 37)
    assert await redis_keys(real_redis, key_prefix) == user_hashes(core, "ann")


async def test_an_unused_hold_expires_with_a_full_refund(
    core: Core, sessions: Sessions, real_redis: Any, key_prefix: str, database_url: str,
) -> None:
    await new_user(core, "ann")
    idle = await new_job(core, "ann", total=5, hold_ttl_ms=1)
    uploaded = await new_job(core, "ann", total=2, hold_ttl_ms=1)
    await core.transition(uploaded, "created", "uploaded", owner="ann")
    executed = await new_job(core, "ann", total=3, hold_ttl_ms=1)
    await core.transition(executed, "created", "uploaded", owner="ann")
    await core.transition(executed, "uploaded", "queued", owner="ann")
    # A stale hold entry for a job that already moved on is ignored, not canceled.
    await real_redis.zadd(core.keys.bucket(core.keys.bucket_of_user("ann")).holds, {executed: 0})
    await asyncio.sleep(0.01)

    stats = await flush_once(core, sessions, settings_for(key_prefix))
    assert stats.expired_holds == 2
    for job_id in (idle, uploaded):
        record = await core.job_record(job_id)
        assert (record["state"], record["reason"], record["charged"]) == (
            "canceled", "hold_expired", "0")
    assert (await core.job_record(executed))["state"] == "queued"
    user = await core.user_record("ann")
    assert (user["available"], user["reserved"]) == (str(START_CREDITS - 3), "3")

    stats = await flush_once(core, sessions, settings_for(key_prefix))
    assert stats.flushed_jobs == 2
    async with sessions() as session:
        row = await session.get(JobLog, idle)
    assert row is not None and row.state == "canceled" and row.refunded == 5
    assert [item["status"] for item in row.items] == ["pending"] * 5


async def test_a_running_job_whose_lease_ran_out_fails_and_refunds_the_rest(
    core: Core, sessions: Sessions, real_redis: Any, key_prefix: str, database_url: str,
) -> None:
    await new_user(core, "ann")
    stuck = await new_job(core, "ann", total=4)
    await start(core, stuck, "ann", lease_ms=1)
    await report(core, stuck, "ann", 0, True, lease_ms=1)
    alive = await new_job(core, "ann", total=2)
    await start(core, alive, "ann")
    await asyncio.sleep(0.01)

    stats = await flush_once(core, sessions, settings_for(key_prefix))
    assert stats.expired_leases == 1
    record = await core.job_record(stuck)
    assert (record["state"], record["reason"], record["charged"], record["refunded"]) == (
        "failed", "lease_expired", "1", "3")
    assert (await core.job_record(alive))["state"] == "running"
    with pytest.raises(InvalidTransition):
        await report(core, stuck, "ann", 1, True)  # the late worker changes nothing

    await flush_once(core, sessions, settings_for(key_prefix))
    async with sessions() as session:
        row = await session.get(JobLog, stuck)
        ledger = (await session.scalars(
            select(LedgerEntry.amount).where(LedgerEntry.job_id == stuck))).all()
    assert row is not None and (row.state, row.charged, row.refunded) == ("failed", 1, 3)
    assert sorted(ledger) == [-4, -1, 4]  # hold, charge, release


async def test_queued_jobs_nobody_started_go_to_the_requeue_hook_once(
    core: Core, sessions: Sessions, real_redis: Any, key_prefix: str, database_url: str,
) -> None:
    await new_user(core, "ann")
    stale, broken, fresh = [await new_job(core, "ann") for _ in range(3)]
    for job_id in (stale, broken, fresh):
        await core.transition(job_id, "created", "uploaded", owner="ann")
        await core.transition(job_id, "uploaded", "queued", owner="ann")
    queued_key = core.keys.bucket(core.keys.bucket_of_user("ann")).queued
    await real_redis.zadd(queued_key, {stale: 0, broken: 0})  # queued long ago
    requeued: list[str] = []

    async def requeue(job_id: str) -> None:
        if job_id == broken:
            raise RuntimeError("queue unreachable")
        requeued.append(job_id)

    settings = settings_for(key_prefix)
    assert (await flush_once(core, sessions, settings, requeue=requeue)).requeued == 1
    assert requeued == [stale]
    assert (await flush_once(core, sessions, settings, requeue=requeue)).requeued == 0
    assert not await flush_once(core, sessions, settings)  # without a hook: left alone
    assert (await core.job_record(stale))["state"] == "queued"


async def test_run_flusher_builds_its_own_clients_and_flushes(
    core: Core, sessions: Sessions, real_redis: Any, key_prefix: str, database_url: str,
    redis_url: str,
) -> None:
    await three_finished_jobs(core)
    settings = settings_for(key_prefix, database_url, redis_url=redis_url)
    totals = await run_flusher(settings, once=True)
    assert (totals.flushed_jobs, totals.ledger_entries) == (3, EXPECTED_LEDGER)
    assert await sql_counts(sessions) == (3, EXPECTED_LEDGER)

    stop = asyncio.Event()
    loop_task = asyncio.create_task(run_flusher(settings_for(
        key_prefix, database_url, redis_url=redis_url, flusher_interval=0.05), once=False,
        stop=stop))
    await finished_job(core, "ann", (True,))
    for _ in range(1500):  # the loop flushes it within a few intervals
        # ... and its due index empties once a visit saw no write land during it
        if (await sql_counts(sessions))[0] == 4 and not await DueIndex(core).scores():
            break
        await asyncio.sleep(0.02)
    stop.set()
    totals = await asyncio.wait_for(loop_task, timeout=30)
    assert totals.flushed_jobs == 1
    assert await redis_keys(real_redis, key_prefix) == user_hashes(core, "ann", "bob")


@pytest.mark.slow  # a flusher process: over 3 s
def test_flusher_process_exits_cleanly_on_sigterm(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    from service.history.engine import run_migrations

    url = f"sqlite:///{tmp_path / 'sig.db'}"
    run_migrations(url)
    env = {**os.environ, "TOLLGATE_REDIS_URL": redis_url, "TOLLGATE_KEY_PREFIX": key_prefix,
           "TOLLGATE_DATABASE_URL": url, "TOLLGATE_BUCKETS": "4",
           "TOLLGATE_FLUSHER_INTERVAL": "0.05"}
    code = ("import asyncio; from service.settings import Settings; "
            "from service.flusher.loop import run_flusher; "
            "asyncio.run(run_flusher(Settings(), once=False))")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("flusher: 4 buckets"), first + (proc.stderr.read() if
                                                                 proc.stderr else "")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "flusher: stopped" in out


def test_flush_stats_add_up_and_read_well() -> None:
    total = FlushStats()
    total.add(FlushStats(expired_holds=1, flushed_jobs=2))
    total.add(FlushStats(ledger_entries=3, saturated=True))
    assert (total.expired_holds, total.flushed_jobs, total.ledger_entries) == (1, 2, 3)
    assert total.saturated and total
    assert not FlushStats(saturated=True)
    assert "2 jobs and 3 ledger entries flushed" in str(total)


@pytest.mark.cluster
async def test_the_flusher_runs_on_redis_cluster(
    cluster_url: str, key_prefix: str, sessions: Sessions, database_url: str
) -> None:
    from service.state.clients import state_redis
    from service.state.keys import KeySpace

    settings = settings_for(key_prefix, redis_url=cluster_url)
    client = state_redis(settings)
    try:
        core = Core(client, KeySpace(key_prefix, BUCKETS))
        await three_finished_jobs(core)
        expiring = await new_job(core, "bob", hold_ttl_ms=1)
        await asyncio.sleep(0.01)
        first = await flush_once(core, sessions, settings)
        second = await flush_once(core, sessions, settings)
        assert (first.flushed_jobs, first.expired_holds, second.flushed_jobs) == (3, 1, 1)
        assert await sql_counts(sessions) == (4, EXPECTED_LEDGER + 2)  # its hold, release
        assert not await core.job_record(expiring)
    finally:
        async for key in client.scan_iter(match=f"{key_prefix}:*", count=1000):
            await client.delete(key)
        await client.aclose()


async def test_the_flusher_loop_survives_a_failed_pass(
    core: Core, sessions: Sessions, real_redis: Any, key_prefix: str, database_url: str,
    redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    await three_finished_jobs(core)
    real_flush_once = flusher.flush_once
    stop = asyncio.Event()
    calls = 0

    async def flaky(*args: Any, **kwargs: Any) -> FlushStats:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("SQL went away for a moment")
        if calls == 3:
            stop.set()
        return await real_flush_once(*args, **kwargs)

    monkeypatch.setattr(flusher, "flush_once", flaky)
    settings = settings_for(key_prefix, database_url, redis_url=redis_url, flusher_interval=0.01)
    totals = await asyncio.wait_for(run_flusher(settings, once=False, stop=stop), timeout=60)
    assert totals.flushed_jobs == 3
    assert await sql_counts(sessions) == (3, EXPECTED_LEDGER)
