"""The books close after a Redis loss (issue 17): a finished job's release and charge reach
SQL in the transaction of its jobs_log row, never before it, on the first flusher pass after
it ended (its Redis record stays until TOLLGATE_FLUSH_DELAY): a loss after that pass keeps the
job as charged, a loss before it loses the job whole and free; the rebuild then gives every
job its ledger names a row. On SQLite and PostgreSQL, real Redis
under the test's own key prefix ("wiped": every key of the prefix deleted).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from service.cli.audit import run_audit
from service.flusher.dead_letters import Record
from service.flusher.loop import flush_once
from service.history.balances import (
    jobs_without_row,
    ledger_totals,
    refund_open_holds,
    write_lost_jobs,
)
from service.history.failures import set_aside
from service.history.models import JobLog, LedgerEntry
from service.history.queries import ensure_user_row, insert_ledger
from service.state.records import JOB_IN_SQL
from service.state.store import Core
from tests.persistence.test_flusher import (
    LONG_MS,
    START_CREDITS,
    Sessions,
    new_job,
    new_user,
    settings_for,
    start,
)

pytestmark = pytest.mark.redis

LOST = "lost_with_redis"
HOUR_S = 3600


async def known_user(core: Core, sessions: Sessions, user_id: str) -> None:
    """Provisioned as the API does: a users row (the plan audit compares), then Redis."""
    async with sessions() as session, session.begin():
        await ensure_user_row(session, user_id, "pro")
    await new_user(core, user_id)


async def finished_later(core: Core, user_id: str, outcomes: tuple[bool, ...]) -> str:
    """A job that ends with its flush an hour away (TOLLGATE_FLUSH_DELAY)."""
    job_id = await new_job(core, user_id, total=len(outcomes))
    await start(core, job_id, user_id)
    for index, ok in enumerate(outcomes):
        await core.item_result(job_id, user_id, callback_key=f"{job_id}-{index}", index=index,
                               ok=ok, detail=f"jobs/{job_id}/out/{index}" if ok else "boom",
                               lease_ms=LONG_MS, flush_delay_ms=HOUR_S * 1000)
    return job_id


async def ledger_of_job(sessions: Sessions, job_id: str) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(select(LedgerEntry.kind, LedgerEntry.amount)
                                     .where(LedgerEntry.job_id == job_id))
        return {kind: int(amount) for kind, amount in rows.all()}


async def wipe(core: Core, key_prefix: str) -> None:
    """The state Redis restarted empty, for this test's keys."""
    async for key in core.client.scan_iter(match=f"{key_prefix}:*", count=1000):
        await core.client.delete(key)


async def rebuild(sessions: Sessions, user_id: str) -> int:
    """What restore_user writes to SQL for a user Redis lost (service/api/users.py)."""
    async with sessions() as session, session.begin():
        await refund_open_holds(session, user_id, LOST)
        return await write_lost_jobs(session, user_id, LOST)


async def test_a_finished_job_keeps_its_row_and_charge_through_a_loss_after_one_pass(
    core: Core, sessions: Sessions, key_prefix: str, database_url: str,
) -> None:
    """The pass after a job ends writes its row with its release and charge (one
    transaction), though its Redis record stays for the flush delay: a loss after that pass
    keeps the job as its client saw it, charged."""
    await known_user(core, sessions, "ann")
    done = await finished_later(core, "ann", (True, True, False))  # charged 2 of cost 3
    settings = settings_for(key_prefix, database_url)
    stats = await flush_once(core, sessions, settings)
    assert stats.flushed_jobs == 0  # still in Redis until its flush...
    assert stats.ledger_entries == 4  # ...but signup, hold, release and charge are in SQL
    assert await ledger_of_job(sessions, done) == {"hold": -3, "release": 3, "charge": -2}
    assert await core.job_record(done)
    assert (await run_audit(core, sessions, ["ann"])).differences == []

    await wipe(core, key_prefix)
    assert await rebuild(sessions, "ann") == 0  # nothing lost: its row is there
    async with sessions() as session:
        row = await session.get(JobLog, done)
        assert row is not None
        assert (row.user_id, row.state, row.cost, row.charged, row.refunded) == (
            "ann", "done", 3, 2, 1)
        assert await jobs_without_row(session) == {}
        totals = (await ledger_totals(session, ["ann"]))["ann"]
    assert (totals.total, totals.charges) == (START_CREDITS - 2, -2)


async def test_a_loss_before_any_pass_loses_the_job_whole_and_free(
    core: Core, sessions: Sessions, key_prefix: str, database_url: str,
) -> None:
    """Held and ended between two passes: SQL has its hold at most, never its money without
    its row; the rebuild releases the hold and writes the row that says it was lost."""
    await known_user(core, sessions, "ann")
    settings = settings_for(key_prefix, database_url)
    job_id = await new_job(core, "ann", total=3)
    await flush_once(core, sessions, settings)  # the hold reaches SQL
    await start(core, job_id, "ann")
    for index in range(3):
        await core.item_result(job_id, "ann", callback_key=f"{job_id}-{index}", index=index,
                               ok=True, detail=f"jobs/{job_id}/out/{index}",
                               lease_ms=LONG_MS, flush_delay_ms=HOUR_S * 1000)
    await wipe(core, key_prefix)  # before the pass that would have written it
    assert await ledger_of_job(sessions, job_id) == {"hold": -3}
    assert await rebuild(sessions, "ann") == 1
    async with sessions() as session:
        row = await session.get(JobLog, job_id)
        assert row is not None
        assert (row.state, row.reason, row.charged, row.refunded) == ("canceled", LOST, 0, 3)
        assert await jobs_without_row(session) == {}
        totals = (await ledger_totals(session, ["ann"]))["ann"]
    assert (totals.total, totals.charges) == (START_CREDITS, 0)
    assert await rebuild(sessions, "ann") == 0  # a second rebuild writes nothing


async def test_a_flushed_job_has_its_row_release_and_charge_together(
    core: Core, sessions: Sessions, key_prefix: str, database_url: str,
) -> None:
    await known_user(core, sessions, "ann")
    done = await finished_later(core, "ann", (True, False))
    settings = settings_for(key_prefix, database_url)
    early = await flush_once(core, sessions, settings)  # its row and money, job in Redis
    assert early.flushed_jobs == 0
    assert (await core.job_record(done)).get(JOB_IN_SQL)  # marked: its rows are in SQL
    bucket = core.keys.bucket(core.keys.bucket_of_user("ann"))
    assert await core.client.llen(bucket.ledger) == 0
    await core.client.zadd(bucket.flush, {done: 0})  # the hour has passed
    stats = await flush_once(core, sessions, settings, reindex="all")
    # The flush takes it out of Redis and writes nothing twice (the mark says its row and
    # money are in SQL).
    assert (stats.flushed_jobs, stats.ledger_entries) == (1, 0)
    assert await ledger_of_job(sessions, done) == {"hold": -2, "release": 2, "charge": -1}
    async with sessions() as session:
        assert (await session.get(JobLog, done)).charged == 1  # type: ignore[union-attr]
        assert await jobs_without_row(session) == {}
    await wipe(core, key_prefix)
    assert await rebuild(sessions, "ann") == 0  # nothing lost: the row is there


async def test_a_job_split_before_the_fix_gets_a_row_with_what_it_charged(
    core: Core, sessions: Sessions, database_url: str,
) -> None:
    """Books an older flusher left split (charge in SQL, no row): the rebuild writes a row
    that says the job was lost, with what it charged; a job set aside is not lost."""
    at = datetime(2030, 1, 1, tzinfo=UTC)

    def entry(kind: str, job_id: str, amount: int) -> dict[str, Any]:
        return {"id": f"{kind}:{job_id}", "user_id": "ann", "kind": kind, "amount": amount,
                "job_id": job_id, "reason": None, "at": at}

    split, waiting = "01j00000000000000000000000-1", "01j00000000000000000000001-1"
    async with sessions() as session, session.begin():
        await insert_ledger(session, [
            entry("hold", split, -15), entry("release", split, 15), entry("charge", split, -15),
            entry("hold", waiting, -4), entry("release", waiting, 4),
        ])
        record = Record("job", waiting, {"job": {"id": waiting}, "items": {}, "meta": None})
        await set_aside(session, kind="job", record_id=waiting, record=record.source,
                        error="refused", attempts=3, first_failed_at=at)
    async with sessions() as session:
        assert await jobs_without_row(session) == {"ann": sorted([split, waiting])}
    assert await rebuild(sessions, "ann") == 1
    async with sessions() as session:
        row = await session.get(JobLog, split)
        assert row is not None
        assert (row.state, row.reason, row.cost, row.charged, row.refunded, row.created_at) == (
            "canceled", LOST, 15, 15, 0, at)
        assert await session.get(JobLog, waiting) is None  # waits for its retry


async def test_audit_names_a_job_the_ledger_names_without_its_row(
    core: Core, sessions: Sessions, key_prefix: str, database_url: str,
) -> None:
    await known_user(core, sessions, "ann")
    live = await new_job(core, "ann", total=2)  # its hold is flushed, the job is in Redis
    await flush_once(core, sessions, settings_for(key_prefix, database_url))
    assert (await run_audit(core, sessions, ["ann"])).differences == []
    async with sessions() as session, session.begin():  # a job SQL names, Redis never had
        await insert_ledger(session, [
            {"id": "release:01j00000000000000000000000-1", "user_id": "ann", "kind": "release",
             "amount": 0, "job_id": "01j00000000000000000000000-1", "reason": None,
             "at": datetime(2030, 1, 1, tzinfo=UTC)}])
    [difference] = (await run_audit(core, sessions, ["ann"])).differences
    assert "without a jobs_log row" in difference.what
    assert "01j00000000000000000000000-1" in difference.what and live not in difference.what


@pytest.mark.cluster
async def test_on_redis_cluster_a_finished_job_reaches_sql_with_its_row_and_money(
    cluster_url: str, key_prefix: str, sessions: Sessions, database_url: str,
) -> None:
    from service.state.clients import state_redis
    from service.state.keys import KeySpace
    from tests.persistence.conftest import BUCKETS

    settings = settings_for(key_prefix, database_url, redis_url=cluster_url)
    client = state_redis(settings)
    try:
        core = Core(client, KeySpace(key_prefix, BUCKETS))
        await known_user(core, sessions, "ann")
        done = await finished_later(core, "ann", (True, False))
        await flush_once(core, sessions, settings)  # its row and money, job still in Redis
        assert await ledger_of_job(sessions, done) == {"hold": -2, "release": 2, "charge": -1}
        assert await core.job_record(done)
        assert (await run_audit(core, sessions, ["ann"])).differences == []
        bucket = core.keys.bucket(core.keys.bucket_of_user("ann"))
        await client.zadd(bucket.flush, {done: 0})
        assert (await flush_once(core, sessions, settings, reindex="all")).flushed_jobs == 1
        assert await ledger_of_job(sessions, done) == {"hold": -2, "release": 2, "charge": -1}
    finally:
        async for key in client.scan_iter(match=f"{key_prefix}:*", count=1000):
            await client.delete(key)
        await client.aclose()
