"""The flusher's per-bucket scripts: flush_read reads what a visit writes in one reply, and
mark_in_sql marks only final jobs, never re-creates a flushed one, and marks nothing when a
key holds another type. On fakeredis, standalone Redis and Redis Cluster."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from service.state.records import JOB_IN_SQL
from service.state.store import Core
from tests.core.job_setup import FLUSH_MS, new_job, new_user

USER = "flushy"


async def test_mark_in_sql_marks_final_jobs_only_and_recreates_none(core: Core) -> None:
    await new_user(core, USER)
    live = await new_job(core, USER, state="queued")
    ended = await new_job(core, USER)
    await core.cancel(ended, USER, reason="user", flush_delay_ms=FLUSH_MS)
    gone = await new_job(core, USER)
    await core.cancel(gone, USER, reason="user", flush_delay_ms=FLUSH_MS)
    assert await core.flush_done(gone, USER)  # flushed: its hash is deleted

    assert await core.mark_in_sql([live, ended, gone]) == 1
    assert (await core.job_record(ended)).get(JOB_IN_SQL)
    assert JOB_IN_SQL not in await core.job_record(live)
    assert await core.job_record(gone) == {}  # not re-created as a one-field hash
    assert await core.mark_in_sql([]) == 0


async def test_mark_in_sql_on_a_wrong_typed_key_marks_nothing(core: Core) -> None:
    await new_user(core, USER)
    ended = await new_job(core, USER)
    await core.cancel(ended, USER, reason="user", flush_delay_ms=FLUSH_MS)
    stray = await new_job(core, USER)
    await core.cancel(stray, USER, reason="user", flush_delay_ms=FLUSH_MS)
    await core.flush_done(stray, USER)
    await core.client.set(core.job_keys(stray).base, "not-a-hash")
    with pytest.raises(ResponseError, match="mark_in_sql: wrong_type 2"):
        await core.mark_in_sql([ended, stray])
    assert JOB_IN_SQL not in await core.job_record(ended)


async def test_flush_read_returns_the_ledger_and_each_jobs_records(core: Core) -> None:
    await new_user(core, USER)
    ended = await new_job(core, USER, total=2)
    await core.cancel(ended, USER, reason="user", flush_delay_ms=FLUSH_MS)
    missing = core.keys.new_job_id(USER)
    bucket = core.keys.bucket_of_user(USER)
    read = await core.flush_read(bucket, [ended, missing], ledger_limit=100)
    assert read.ledger_head == await core.ledger_head(bucket, 100)
    assert any(f"release:{ended}" in entry for entry in read.ledger_head)
    assert read.retries_due == []
    assert read.snapshots == await core.raw_job_snapshots([ended, missing])
    assert read.snapshots[1] == ({}, {}, None)
    assert read.webhook_logs == await core.webhook_logs([ended, missing])
    assert len((await core.flush_read(bucket, [], ledger_limit=1)).ledger_head) == 1
