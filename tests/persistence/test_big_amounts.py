"""Credit amounts up to what the admin API accepts (10**12) reach PostgreSQL intact."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from service.flusher.loop import flush_once
from service.history.engine import make_engine, make_session_factory
from service.history.models import JobLog, LedgerEntry
from service.settings import Settings
from service.state.keys import KeySpace
from service.state.plans import PLANS
from service.state.store import Core

TRILLION = 10**12


async def test_trillion_credit_grants_and_jobs_flush_to_postgres(
        real_redis: Any, key_prefix: str, migrated_postgres_url: str) -> None:
    settings = Settings(key_prefix=key_prefix, buckets=16, flush_delay=0, jwt_secret="x" * 32)
    core = Core(real_redis, KeySpace(key_prefix, 16))
    await core.ensure_user("whale", PLANS["pro"], TRILLION)
    job_id = core.keys.new_job_id("whale")
    await core.reserve(job_id=job_id, user_id="whale", total=2, price=TRILLION // 4,
                       hold_ttl_ms=60_000, meta_json="[]")
    await core.cancel(job_id, "whale", reason="user", flush_delay_ms=0)
    engine = make_engine(migrated_postgres_url)
    try:
        sessions = make_session_factory(engine)
        await flush_once(core, sessions, settings, claim_ms=1)
        async with sessions() as session:
            ledger = {e.id: e.amount for e in await session.scalars(select(LedgerEntry))}
            job = await session.get(JobLog, job_id)
    finally:
        await engine.dispose()
    assert ledger["signup:whale"] == TRILLION
    assert ledger[f"hold:{job_id}"] == -TRILLION // 2
    assert ledger[f"release:{job_id}"] == TRILLION // 2
    assert sum(ledger.values()) == TRILLION
    assert job is not None and job.cost == TRILLION // 2 and job.refunded == TRILLION // 2
