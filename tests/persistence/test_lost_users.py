"""A user Redis lost who never makes another request is rebuilt by the flusher
(service/flusher/lost_users.py): its open hold is released in SQL, its lost job gets its
`lost_with_redis` row, its record comes back with the ledger's balance, and the books audit
clean, on standalone Redis and on Redis Cluster. A bucket whose `checked` mark survived
costs no SQL query."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service.cli.audit import run_audit
from service.flusher.loop import flush_once
from service.flusher.lost_users import rebuild_lost_users
from service.history.models import JobLog
from service.jobs.provisioning import provision_user
from service.runtime import open_runtime
from tests.persistence.test_books_after_loss import LOST, ledger_of_job, wipe
from tests.persistence.test_flusher import BUCKETS, new_job, settings_for

SIGNUP = 40


@pytest.fixture(params=["redis", pytest.param("cluster", marks=pytest.mark.cluster)])
def state_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("redis_url" if request.param == "redis"
                                       else "cluster_url")
    return url


async def test_the_flusher_rebuilds_a_user_who_never_returns(
    state_url: str, redis_url: str, key_prefix: str, database_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_for(key_prefix, database_url, redis_url=state_url,
                            queue_redis_url=redis_url, storage_dir=str(tmp_path / "files"),
                            signup_credits=SIGNUP)
    rt = await open_runtime(settings, "s" * 32)
    queries = 0
    import service.flusher.lost_users as lost_users
    counted = lost_users.users_with_jobs_without_row

    async def counting(*args: Any, **kwargs: Any) -> list[str]:
        nonlocal queries
        queries += 1
        return await counted(*args, **kwargs)

    monkeypatch.setattr(lost_users, "users_with_jobs_without_row", counting)
    try:
        await provision_user(rt, "ann")
        await provision_user(rt, "bob")
        live = await new_job(rt.core, "ann", total=3)  # held, never run
        await flush_once(rt.core, rt.sessions, settings)  # its hold reaches SQL
        assert await ledger_of_job(rt.sessions, live) == {"hold": -3}
        every = range(BUCKETS)
        # A fresh Redis has no loss sentinel: the first check reads every bucket's mark.
        assert await rebuild_lost_users(rt, []) == 0 and queries == 1  # nobody lost
        assert await rebuild_lost_users(rt, every) == 0 and queries == 1  # marked: no SQL

        await wipe(rt.core, key_prefix)  # Redis restarted empty; ann never comes back
        assert not await rt.core.user_exists("ann")
        # The sentinels went with it: the next pass checks every bucket, whatever its share.
        assert await rebuild_lost_users(rt, []) == 1 and queries == 2
        assert await rt.core.user_exists("ann")
        assert not await rt.core.user_exists("bob")  # no work in SQL: its request rebuilds it
        assert await ledger_of_job(rt.sessions, live) == {"hold": -3, "release": 3}
        async with rt.sessions() as session:
            row = await session.scalar(select(JobLog).where(JobLog.id == live))
        assert row is not None and (row.state, row.reason) == ("canceled", LOST)
        record = await rt.core.user_record("ann")
        assert (int(record["available"]), int(record["reserved"])) == (SIGNUP, 0)
        assert (await run_audit(rt.core, rt.sessions, ["ann"])).differences == []
        assert await rebuild_lost_users(rt, every) == 0 and queries == 2

        # One bucket lost on its own (a Cluster node that held no sentinel): found when the
        # safety net's share reaches it.
        second = await new_job(rt.core, "ann", total=2)
        await flush_once(rt.core, rt.sessions, settings)
        bucket = rt.core.keys.bucket_of_user("ann")
        async for key in rt.core.client.scan_iter(
                match=f"{rt.core.keys.bucket(bucket).tag}:*", count=1000):
            await rt.core.client.delete(key)
        assert await rebuild_lost_users(rt, []) == 0 and queries == 2
        assert await rebuild_lost_users(rt, [bucket]) == 1 and queries == 3
        assert await ledger_of_job(rt.sessions, second) == {"hold": -2, "release": 2}
        assert (await run_audit(rt.core, rt.sessions, ["ann"])).differences == []
    finally:
        await wipe(rt.core, key_prefix)
        await rt.close()
