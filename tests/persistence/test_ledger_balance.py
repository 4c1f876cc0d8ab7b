"""The ledger adds up: after a random concurrent workload and the flush, for EVERY user,
SUM(amount) in credit_ledger is Redis `available`, -SUM(charges) is `spent`, SUM(grants) is
`granted`, and `tollgate audit` finds nothing. Then a difference planted in Redis is found.

The seed is random per run and printed on failure; TOLLGATE_TEST_SEED replays one.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from sqlalchemy import func, select

from service.cli.audit import audit, run_audit
from service.history.balances import LedgerTotals, history_charged, ledger_totals
from service.history.models import LedgerEntry
from service.state.keys import KeySpace
from service.state.store import Core
from tests.persistence.conftest import BUCKETS
from tests.persistence.workload import Sessions, drain, run_workload, settings_for

pytestmark = pytest.mark.redis

USERS = 30
OPS_PER_CLIENT = 25  # two clients per user: 1,500 operations


@pytest.fixture
async def core(redis_url: str, key_prefix: str, real_redis: Any) -> AsyncIterator[Core]:
    """A Core whose pool waits for a free connection instead of raising: 60 clients and a
    flusher may want more than redis-py's default 100 at once. (real_redis: the cleanup.)"""
    pool = BlockingConnectionPool.from_url(redis_url, decode_responses=True,
                                           max_connections=100, timeout=30)
    client = Redis(connection_pool=pool)
    yield Core(client, KeySpace(key_prefix, BUCKETS))
    await client.aclose()
    await pool.aclose()


def seed() -> int:
    return int(os.environ.get("TOLLGATE_TEST_SEED") or random.randrange(2**32))


async def test_every_users_ledger_adds_up_after_a_random_concurrent_workload(
    core: Core, sessions: Sessions, key_prefix: str
) -> None:
    run_seed = seed()
    settings = settings_for(key_prefix, BUCKETS)
    users, tally = await run_workload(core, sessions, settings, run_seed, users=USERS,
                                      ops_per_client=OPS_PER_CLIENT)
    await drain(core, sessions, settings, tally)
    context = f"seed {run_seed}, {tally}"
    # The workload did every kind of thing, and the flusher ended jobs too.
    assert {"reserve", "start", "item", "cancel", "grant"} <= tally.kinds.keys(), context
    assert tally.flushed.flushed_jobs > 0 and tally.flushed.ledger_entries > 0, context
    assert tally.flushed.expired_holds > 0 and tally.flushed.expired_leases > 0, context

    async with sessions() as session:
        totals = await ledger_totals(session, users)
        charged = await history_charged(session, users)
        kinds = set(await session.scalars(select(LedgerEntry.kind).distinct()))
        duplicates = await session.scalar(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.id.like("hold:%"))
            .where(LedgerEntry.amount >= 0))
    assert kinds == {"grant", "hold", "release", "charge"}, context
    assert duplicates == 0
    checked = 0
    for user in users:
        record = await core.user_record(user)
        money = {name: int(record[name]) for name in ("available", "reserved", "spent",
                                                      "granted")}
        sql = totals.get(user, LedgerTotals())
        assert money["granted"] == money["available"] + money["reserved"] + money["spent"]
        assert (sql.total, -sql.charges, sql.grants) == (
            money["available"], money["spent"], money["granted"]), (user, money, sql, context)
        assert charged.get(user, (0, 0))[1] == money["spent"], (user, context)
        checked += 1
    assert checked == USERS

    report = await run_audit(core, sessions)
    assert report.users == USERS and report.differences == [], (report, context)


async def test_audit_finds_a_difference_planted_in_redis(
    core: Core, sessions: Sessions, key_prefix: str, database_url: str, real_redis: Any,
    redis_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_for(key_prefix, BUCKETS).model_copy(
        update={"database_url": database_url, "redis_url": redis_url})
    users, tally = await run_workload(core, sessions, settings, seed(), users=6,
                                      ops_per_client=10)
    await drain(core, sessions, settings, tally)
    assert await audit(settings, None) == 0
    assert "6 users checked, 0 differences" in capsys.readouterr().out

    victim = users[3]
    await real_redis.hincrby(core.keys.user(victim).base, "available", 7)
    report = await run_audit(core, sessions)
    assert {(d.user_id, d.what) for d in report.differences} == {
        (victim, "granted - reserved - spent"), (victim, "available vs SUM(ledger)")}
    assert await audit(settings, victim) == 1
    out = capsys.readouterr().out
    assert f"DIFFERENCE {victim}: available vs SUM(ledger)" in out
    assert "1 users checked, 2 differences" in out
    assert await audit(settings, users[0]) == 0  # --user checks that user only
    assert await audit(settings, "nobody-at-all") == 1  # an unknown user is an error
