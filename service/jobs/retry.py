"""POST /jobs/{id}/retry: a new job that runs only the failed items of a finished one.

It takes the same path as POST /jobs (reserve.lua: the concurrency slot, the hold at the
original job's price, the ledger's hold entry), created `uploaded` on copies of the stored
inputs, so the client only executes it. The copies are the new job's own files: its flush
and its retention never touch the original's. The inputs of a job's failed items are kept
TOLLGATE_RETRY_WINDOW after it finished (service.flusher.retention deletes them then);
past that, 410.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from service.contract import input_key
from service.errors import (
    IdempotencyKeyReused,
    InputsExpired,
    InvalidTransition,
    NotFound,
    NothingToRetry,
    TollgateError,
)
from service.history.models import JobLog, utcnow
from service.history.queries import history_job
from service.history.retention import failed_indexes
from service.jobs.alerts import min_price
from service.jobs.provisioning import as_known_user
from service.jobs.views import get_job
from service.runtime import Runtime
from service.state.apikeys import KeySpend
from service.state.codes import Code
from service.state.fsm import TERMINAL, JobState
from service.state.records import JobRecord
from service.state.store import now_ms


def retry_hash(job_id: str) -> str:
    """The 'body' an Idempotency-Key is bound to: the job retried."""
    return hashlib.sha256(f"retry:{job_id}".encode()).hexdigest()


async def _finished(rt: Runtime, user_id: str, job_id: str) -> JobRecord | JobLog:
    """The caller's job, live (with items) or from history; 404 as GET /jobs/{id}."""
    if rt.core.keys.job(job_id) is None:
        raise NotFound(f"no job {job_id!r}")
    job = await rt.core.job_snapshot(job_id)
    if job is not None and job.user_id == user_id:
        return job
    if job is None:
        async with rt.sessions() as session:
            row = await history_job(session, user_id, job_id)
        if row is not None:
            return row
    raise NotFound(f"no job {job_id!r}")


async def _failed_items(rt: Runtime, job: JobRecord | JobLog) -> list[dict[str, Any]]:
    """The items to run again, refusing what cannot be retried (409, 410)."""
    if str(job.state) not in TERMINAL:
        raise InvalidTransition(f"the job is {job.state}: only a finished job is retried",
                                job_status=str(job.state))
    indexes = failed_indexes(job.items)
    if not indexes:
        raise NothingToRetry("no item of the job failed")
    finished = job.finished_at or job.updated_at
    gone = isinstance(job, JobLog) and (job.inputs_deleted_at or job.results_deleted_at)
    if gone or finished < utcnow() - timedelta(seconds=rt.settings.retry_window):
        raise InputsExpired("the inputs were kept TOLLGATE_RETRY_WINDOW "
                            f"({rt.settings.retry_window} s) after the job finished")
    if await rt.storage.missing([input_key(job.id, index) for index in indexes]):
        raise InputsExpired("the job's inputs are gone")
    by_index = {int(item["index"]): item for item in job.items or ()}
    return [by_index[index] for index in indexes]


async def _replay(rt: Runtime, user_id: str, job_id: str, idempotency_key: str | None
                  ) -> str | None:
    """The retry job an earlier request with this Idempotency-Key made, else None."""
    if idempotency_key is None:
        return None
    earlier = await rt.core.idempotent_job(user_id, idempotency_key)
    if earlier is None:
        return None
    if earlier[1] != retry_hash(job_id):
        raise IdempotencyKeyReused(f"the Idempotency-Key is job {earlier[0]}'s")
    return earlier[0]


async def _copy_inputs(rt: Runtime, user_id: str, original: str, new_id: str,
                       indexes: list[int]) -> None:
    """The new job's inputs, copied inside the storage. A copy that fails cancels the new
    job (its hold released): the client sees the refusal, never a job without inputs."""
    try:
        await rt.storage.copy([(input_key(original, index), input_key(new_id, position))
                               for position, index in enumerate(indexes)])
    except BaseException as error:
        await rt.core.cancel(new_id, user_id, reason="inputs_expired",
                             flush_delay_ms=rt.settings.flush_delay * 1000)
        if isinstance(error, FileNotFoundError):
            raise InputsExpired("the job's inputs are gone") from error
        raise


async def retry_job(rt: Runtime, user_id: str, job_id: str, idempotency_key: str | None,
                    key: KeySpend | None = None) -> dict[str, Any]:
    digest = retry_hash(job_id)
    try:
        original = await _finished(rt, user_id, job_id)
        items = await _failed_items(rt, original)
        model = rt.models.get(original.model)
        rt.models.check_available(model)
    except NotFound:
        raise  # another user's job stays unseen, whatever the key
    except TollgateError:
        replayed = await _replay(rt, user_id, job_id, idempotency_key)
        if replayed is None:
            raise
        return await _answer(rt, user_id, replayed, replay=True)
    indexes = [int(item["index"]) for item in items]
    meta = [{"name": i.get("name"), "content_type": i.get("content_type"),
             "size": i.get("size")} for i in items]
    settings = rt.settings
    new_id = rt.core.keys.new_job_id(user_id)

    async def reserve() -> tuple[Code, str]:
        return await rt.core.reserve(
            job_id=new_id, user_id=user_id, total=len(items), at_ms=now_ms(),
            price=original.price, model=model.name, hold_ttl_ms=settings.hold_ttl * 1000,
            meta_json=json.dumps(meta, separators=(",", ":")), rule_id=original.rule_id or "",
            idempotency_key=idempotency_key, body_hash=digest,
            idempotency_ttl_ms=settings.idempotency_ttl * 1000,
            params_json=json.dumps(original.params or {}, separators=(",", ":")),
            bill_input_errors=model.bill_input_errors, result_ttl_s=original.result_ttl_s,
            retry_of=job_id, uploaded=True, key=key, min_price=min_price(rt))

    code, new_id = await as_known_user(rt, user_id, reserve)
    view = await get_job(rt, user_id, new_id, with_items=False)
    if view["status"] == JobState.UPLOADED:  # a replay copies again after a crash mid-copy
        await _copy_inputs(rt, user_id, job_id, new_id, indexes)
    return _created(view, replay=code is Code.ALREADY)


async def _answer(rt: Runtime, user_id: str, new_id: str, *, replay: bool) -> dict[str, Any]:
    return _created(await get_job(rt, user_id, new_id, with_items=False), replay=replay)


def _created(view: dict[str, Any], *, replay: bool) -> dict[str, Any]:
    """The create answer (POST /jobs's shape): no uploads, the inputs are there."""
    return {**view, "uploads": [], "idempotent_replay": replay}
