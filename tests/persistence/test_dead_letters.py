"""A record SQL refuses never stalls its bucket: the rest lands in the same pass, the refused
one comes back a few times, then waits in flush_failures until an operator retries it."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, cast

import pytest
from sqlalchemy import Table, func, select, text

from service.api.business_metrics import business_metrics
from service.cli.main import main
from service.flusher.dead_letters import retry_failures
from service.flusher.loop import flush_once
from service.history.models import FlushFailure, JobLog, LedgerEntry
from service.settings import Settings, get_settings
from service.state.store import Core
from tests.persistence.test_flusher import (
    Sessions,
    finished_job,
    new_job,
    new_user,
    settings_for,
    start,
)

pytestmark = pytest.mark.redis

ATTEMPTS = 3


def poison_settings(key_prefix: str, database_url: str = "sqlite://") -> Settings:
    return settings_for(key_prefix, database_url, flush_attempts=ATTEMPTS,
                        flush_retry_delay=0)


def neighbour_of(core: Core, user_id: str) -> str:
    """Another user id in the same bucket."""
    bucket = core.keys.bucket_of_user(user_id)
    return next(f"n{i}" for i in range(10_000) if core.keys.bucket_of_user(f"n{i}") == bucket)


async def ledger_ids(sessions: Sessions) -> set[str]:
    async with sessions() as session:
        return set((await session.scalars(select(LedgerEntry.id))).all())


async def failures(sessions: Sessions) -> list[FlushFailure]:
    async with sessions() as session:
        return list((await session.scalars(select(FlushFailure).order_by(FlushFailure.kind)
                                           )).all())


async def redis_ledger(core: Core, bucket: int) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in await core.client.lrange(core.keys.bucket(bucket).ledger,
                                                                0, -1)]


async def poisoned_bucket(core: Core, poison_job: Any, poison_entry: dict[str, Any]
                          ) -> tuple[int, str, set[str], set[str], set[str]]:
    """ann and a neighbour in one bucket, four finished jobs, one of them poisoned by
    `poison_job(job_id)`, and a poisoned ledger entry in the middle of the ledger list.

    Returns (bucket, poisoned job id, the other job ids, the other ledger entry ids, the
    poisoned job's release and charge ids: those travel with its record only).
    """
    bob = neighbour_of(core, "ann")
    bucket = core.keys.bucket_of_user("ann")
    await new_user(core, "ann")
    await new_user(core, bob)
    jobs = [await finished_job(core, "ann", (True, False))]
    await core.client.rpush(core.keys.bucket(bucket).ledger, json.dumps(poison_entry))
    jobs.append(await finished_job(core, bob, (True,)))
    poisoned = await new_job(core, "ann", total=2)
    await start(core, poisoned, "ann")
    await poison_job(poisoned)
    jobs.append(await finished_job(core, bob, (False, True)))
    ledger = await redis_ledger(core, bucket)
    money = {entry["id"] for entry in ledger
             if entry["kind"] in ("release", "charge") and entry["job_id"] == poisoned}
    assert money
    entries = {entry["id"] for entry in ledger} - {poison_entry["id"]} - money
    return bucket, poisoned, set(jobs), entries, money


async def assert_poison_waits(core: Core, sessions: Sessions, bucket: int, poisoned: str,
                              entry: dict[str, Any]) -> None:
    b = core.keys.bucket(bucket)
    assert (await core.job_record(poisoned))["state"] == "done"
    assert await core.client.zscore(b.flush, poisoned) is not None
    assert await core.client.llen(b.ledger) == 0
    assert [json.loads(raw) for raw in await core.client.zrange(b.ledger_retry, 0, -1)] == [entry]
    assert await failures(sessions) == []


async def assert_poison_set_aside(core: Core, bucket: int, poisoned: str) -> None:
    b = core.keys.bucket(bucket)
    assert await core.job_record(poisoned) == {}
    for key in (b.flush, b.ledger_retry):
        assert await core.client.zcard(key) == 0
    assert await core.client.llen(b.ledger) == 0
    assert await core.client.hgetall(b.flush_attempts) == {}


async def test_a_poisoned_bucket_drains_and_the_poison_is_set_aside_on_postgresql(
    core: Core, pg_sessions: Sessions, key_prefix: str, migrated_postgres_url: str,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sessions, database_url = pg_sessions, migrated_postgres_url
    id_length = cast(Table, LedgerEntry.__table__).c.id.type.length  # type: ignore[attr-defined]
    long_entry = {"id": "grant:" + "u" * id_length, "user_id": "ann", "kind": "grant",
                  "amount": 5, "reason": "poison", "at": 1_800_000_000_000}

    async def nul_in_an_error(job_id: str) -> None:
        for index, ok in enumerate((True, False)):
            await core.item_result(job_id, "ann", callback_key=f"{job_id}-{index}", index=index,
                                   ok=ok, detail="decoder said \x00 here" if not ok else "",
                                   lease_ms=600_000, flush_delay_ms=0)

    bucket, poisoned, others, entries, money = await poisoned_bucket(core, nul_in_an_error,
                                                                     long_entry)
    settings = poison_settings(key_prefix, database_url)
    caplog.set_level(logging.DEBUG, logger="tollgate.flusher")

    first = await flush_once(core, sessions, settings)
    # Every other job and ledger entry of the bucket landed in this very pass.
    assert (first.flushed_jobs, first.ledger_entries, first.set_aside) == (
        len(others), len(entries), 0)
    async with sessions() as session:
        assert set((await session.scalars(select(JobLog.id))).all()) == others
    assert await ledger_ids(sessions) == entries
    await assert_poison_waits(core, sessions, bucket, poisoned, long_entry)

    second = await flush_once(core, sessions, settings)
    assert (second.flushed_jobs, second.set_aside) == (0, 0)
    await assert_poison_waits(core, sessions, bucket, poisoned, long_entry)

    third = await flush_once(core, sessions, settings)
    assert third.set_aside == 2
    await assert_poison_set_aside(core, bucket, poisoned)
    # Set aside with its job's money: SQL's balance is right while the row waits.
    assert await ledger_ids(sessions) == entries | money
    job_failure, ledger_failure = await failures(sessions)
    assert (job_failure.kind, json.loads(job_failure.record_id), job_failure.attempts) == (
        "job", poisoned, ATTEMPTS)
    assert "\\u0000 cannot be converted to text" in job_failure.error
    assert json.loads(job_failure.record)["job"]["id"] == poisoned
    assert (ledger_failure.kind, json.loads(ledger_failure.record_id)) == (
        "ledger", long_entry["id"])
    assert "too long" in ledger_failure.error and ledger_failure.attempts == ATTEMPTS
    # One log line per record set aside, without a traceback; retries only at debug level.
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2 and all(r.exc_info is None for r in warnings)
    assert all("set aside" in r.getMessage() for r in warnings)
    metrics = (await business_metrics(core)).decode()
    assert "tollgate_flush_failures_total 2.0" in metrics
    assert not await flush_once(core, sessions, settings)  # nothing left to do

    # Retried before any fix: refused again, kept with one more attempt.
    outcomes = await retry_failures(sessions)
    assert [outcome.written for outcome in outcomes] == [False, False]
    assert [f.attempts for f in await failures(sessions)] == [ATTEMPTS + 1] * 2

    # The fix: a wider column for the ledger id; the operator cleans the job's error text.
    async with sessions() as session, session.begin():
        await session.execute(text("ALTER TABLE credit_ledger ALTER COLUMN id TYPE text"))
        await session.execute(text(
            "UPDATE flush_failures SET record = replace(record, '\\u0000', ' ') "
            "WHERE kind = 'job'"))
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        # The command line runs its own event loop: in a thread, as from a shell.
        assert await asyncio.to_thread(main, ["inspect", "failures"]) == 0
        listed = json.loads(capsys.readouterr().out)["failures"]
        assert sorted(f["kind"] for f in listed) == ["job", "ledger"]
        assert await asyncio.to_thread(main, ["inspect", "failures", "--retry"]) == 0
        retried = json.loads(capsys.readouterr().out)["retried"]
    finally:
        get_settings.cache_clear()
    assert [outcome["written"] for outcome in retried] == [True, True]
    assert await failures(sessions) == []
    async with sessions() as session:
        row = await session.get(JobLog, poisoned)
        assert row is not None and row.items[1]["error"] == "decoder said   here"
        assert await session.get(LedgerEntry, long_entry["id"]) is not None


async def test_a_record_refused_on_both_databases_is_set_aside_and_the_rest_flushes(
    core: Core, sessions: Sessions, key_prefix: str, database_url: str,
) -> None:
    # A number larger than BIGINT: PostgreSQL refuses it, SQLite's driver cannot bind it.
    huge = 2**70
    huge_entry = {"id": "grant:ann:huge", "user_id": "ann", "kind": "grant", "amount": huge,
                  "at": 1_800_000_000_000}

    async def huge_price(job_id: str) -> None:
        await core.client.hset(core.job_keys(job_id).base, "price", str(huge))
        await core.settle(job_id, "ann", "failed", reason="test", flush_delay_ms=0)

    bucket, poisoned, others, entries, money = await poisoned_bucket(core, huge_price, huge_entry)
    settings = poison_settings(key_prefix, database_url)
    first = await flush_once(core, sessions, settings)
    assert (first.flushed_jobs, first.ledger_entries) == (len(others), len(entries))
    assert await ledger_ids(sessions) == entries
    await flush_once(core, sessions, settings)
    assert (await flush_once(core, sessions, settings)).set_aside == 2
    await assert_poison_set_aside(core, bucket, poisoned)
    assert await ledger_ids(sessions) == entries | money
    assert [f.kind for f in await failures(sessions)] == ["job", "ledger"]
    assert (await core.counter_totals(["flush_failures"]))["flush_failures"] == 2
    # Retrying a single failure by its id touches only that one.
    job_failure = (await failures(sessions))[0]
    [outcome] = await retry_failures(sessions, job_failure.id)
    assert (outcome.failure_id, outcome.written) == (job_failure.id, False)
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(JobLog)) == len(others)


async def test_an_unreadable_ledger_entry_is_set_aside_too(
    core: Core, sessions: Sessions, key_prefix: str, database_url: str,
) -> None:
    await new_user(core, "ann")
    bucket = core.keys.bucket_of_user("ann")
    await core.client.rpush(core.keys.bucket(bucket).ledger, "not json")
    done = await finished_job(core, "ann", (True,))
    settings = settings_for(key_prefix, database_url, flush_attempts=1)
    stats = await flush_once(core, sessions, settings)
    assert (stats.flushed_jobs, stats.set_aside) == (1, 1)
    [failure] = await failures(sessions)
    assert failure.kind == "ledger" and json.loads(failure.record) == {"entry": "not json"}
    assert await core.job_record(done) == {}
    assert await core.client.llen(core.keys.bucket(bucket).ledger) == 0
