"""`tollgate inspect`: the Redis keys and values behind a user or a job, and the records SQL
refused to flush, for operators."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from service.flusher.dead_letters import retry_failures
from service.history.engine import make_engine, make_session_factory
from service.history.failures import list_failures, record_of
from service.settings import Settings
from service.state.clients import state_redis
from service.state.inspect import describe_job, describe_user
from service.state.keys import KeySpace
from service.state.records import iso_z
from service.state.store import Core


async def _with_core(settings: Settings, describe: Callable[[Core, str], Awaitable[Any]],
                     what: str) -> dict[str, Any]:
    core = Core(state_redis(settings), KeySpace(settings.key_prefix, settings.buckets))
    try:
        report: dict[str, Any] = await describe(core, what)
        return report
    finally:
        await core.close()


async def inspect_user(settings: Settings, user_id: str) -> dict[str, Any]:
    return await _with_core(settings, describe_user, user_id)


async def inspect_job(settings: Settings, job_id: str) -> dict[str, Any]:
    return await _with_core(settings, describe_job, job_id)


def missing(report: dict[str, Any]) -> bool:
    """True when Redis holds no record of the user or job (its hash comes first)."""
    if "error" in report:
        return True
    return not next(iter(report.values()), None)


async def inspect_failures(settings: Settings, *, retry: str | None = None) -> dict[str, Any]:
    """The records the flusher set aside (flush_failures), or the outcome of retrying them
    (`retry`: "all" or a failure id)."""
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        if retry is not None:
            outcomes = await retry_failures(sessions, None if retry == "all" else int(retry))
            return {"retried": [asdict(outcome) for outcome in outcomes]}
        async with sessions() as session:
            failures = await list_failures(session)
        return {"failures": [
            {"id": row.id, "kind": row.kind, "record_id": record_of(row)[0],
             "error": row.error, "attempts": row.attempts,
             "first_failed_at": iso_z(row.first_failed_at),
             "last_failed_at": iso_z(row.last_failed_at), "record": record_of(row)[1]}
            for row in failures]}
    finally:
        await engine.dispose()
