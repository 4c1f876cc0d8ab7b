"""A job's view: a live job (Redis) and a job in history (SQL) in one shape, with its place
in line, its result URLs until they expire, and the cursor of a listing."""

from __future__ import annotations

import base64
import logging
import re
from datetime import datetime, timedelta
from typing import Any

from service.contract import output_key
from service.errors import BadArgument, NotFound
from service.history.models import JobLog, utcnow
from service.history.queries import history_job
from service.jobs.provisioning import rebuild_if_lost
from service.runtime import Runtime
from service.state.clients import UNREACHABLE_ERRORS, RedisError
from service.state.fsm import JobState
from service.state.records import ITEM_OK, ITEM_PENDING, JobRecord, iso_z
from service.state.sched import SchedState

log = logging.getLogger(__name__)

# What leaves a queued job's place in line unread (null) rather than failing its view; the
# unreachable errors include the Cluster's own, which are not all RedisErrors.
POSITION_UNREAD: tuple[type[Exception], ...] = (RedisError, OSError, *UNREACHABLE_ERRORS)


def results_expired(finished_at: datetime | None, deleted_at: datetime | None, ttl_s: int
                    ) -> bool:
    """True once the files are gone or due to go (the flusher may not have run yet)."""
    if deleted_at is not None:
        return True
    return finished_at is not None and finished_at < utcnow() - timedelta(seconds=ttl_s)


def _item_view(rt: Runtime, job_id: str, item: dict[str, Any], result_expired: bool
               ) -> dict[str, Any]:
    shown: dict[str, Any] = {"index": item["index"], "name": item.get("name"),
                             "status": item.get("status", ITEM_PENDING)}
    if shown["status"] == ITEM_OK and not result_expired:
        shown["result_url"] = rt.storage.presign_download(
            item.get("output_key") or output_key(job_id, item["index"]),
            rt.settings.result_url_ttl)
    elif item.get("error"):
        shown["error"] = item["error"]
    return shown


def job_links(rt: Runtime, job_id: str) -> dict[str, str]:
    base = f"{rt.settings.public_url.rstrip('/')}/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}


def job_view(rt: Runtime, job: JobRecord | JobLog, with_items: bool) -> dict[str, Any]:
    """A live job (Redis) and a job in history (SQL) carry the same names: one view."""
    done, failed, total = job.done_items, job.failed_items, job.total_items
    view: dict[str, Any] = {
        "id": job.id, "status": str(job.state), "total_items": total, "done_items": done,
        "failed_items": failed, "progress": round((done + failed) / total, 4) if total else 0.0,
        "cost": job.cost, "charged": job.charged, "refunded": job.refunded,
        "rule_id": job.rule_id, "model": job.model, "params": job.params or {},
        "created_at": iso_z(job.created_at),
        "updated_at": iso_z(job.updated_at), "started_at": iso_z(job.started_at),
        "finished_at": iso_z(job.finished_at), "reason": job.reason,
        "queue_position": None, "links": job_links(rt, job.id),
        # Outputs live result_ttl_s (its own, or TOLLGATE_RESULT_TTL) after the job
        # finished; then no result_url.
        "result_expired": results_expired(
            job.finished_at, job.results_deleted_at if isinstance(job, JobLog) else None,
            job.result_ttl_s or rt.settings.result_ttl),
        "result_ttl_s": job.result_ttl_s or rt.settings.result_ttl, "retry_of": job.retry_of,
    }
    unavailable = rt.models.unavailable(job.model)
    if unavailable is not None and job.finished_at is None:  # it waits for a worker
        view["model_unavailable"] = unavailable
    if with_items and job.items is not None:
        view["items"] = [_item_view(rt, job.id, item, view["result_expired"])
                         for item in job.items]
    return view


async def with_queue_position(rt: Runtime, view: dict[str, Any]) -> dict[str, Any]:
    """A queued job's place in its queue's dispatch order (docs/scheduling.md): the jobs
    ahead of it, one ZRANK (O(log n)) on the order's own slot, no bucket read; 0 once every
    batch is in RQ. The view of any other job has null."""
    if view["status"] == JobState.QUEUED and (view["model"] is None
                                              or view["model"] in rt.models):
        try:
            queue = rt.models.get(view["model"]).queue
            workers = await rt.live_workers.counts(rt.models.queues())
            view["waiting_for_worker"] = workers.get(queue, 0) == 0
            rank = await SchedState(rt.core).position(queue, view["id"])
            view["queue_position"] = 0 if rank is None else rank
        except POSITION_UNREAD as error:
            # The order's node away (a Cluster failover) must not fail every queued job's
            # view: the place in line is a hint; the view stands without.
            log.warning("job %s: queue position unread: %s", view["id"],
                        type(error).__name__)
    return view


async def get_job(rt: Runtime, user_id: str, job_id: str, *, with_items: bool = True
                  ) -> dict[str, Any]:
    if rt.core.keys.job(job_id) is None:
        raise NotFound(f"no job {job_id!r}")
    job = await (rt.core.job_snapshot(job_id) if with_items else rt.core.job(job_id))
    if job is not None:
        if job.user_id != user_id:
            raise NotFound(f"no job {job_id!r}")
        return await with_queue_position(rt, job_view(rt, job, with_items))
    async with rt.sessions() as session:
        row = await history_job(session, user_id, job_id)
    if row is None and await rebuild_if_lost(rt, user_id):  # its lost jobs get their rows
        async with rt.sessions() as session:
            row = await history_job(session, user_id, job_id)
    if row is None:
        raise NotFound(f"no job {job_id!r}")
    return job_view(rt, row, with_items)


def encode_cursor(created_ms: int, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_ms}:{job_id}".encode()).decode().rstrip("=")


# A cursor is `<created ms>:<job id>`: checked whole before it reaches a query (a NUL, a
# year past 9999 or a 5000-digit number are 422s, not 500s).
_CURSOR = re.compile(r"([0-9]{1,14}):([0-9a-hjkmnp-tv-z]{26}-[0-9]{1,5})")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadArgument("cursor is not one this API handed out") from exc
    match = _CURSOR.fullmatch(raw)
    if match is None:
        raise BadArgument("cursor is not one this API handed out")
    return int(match[1]), match[2]


async def webhook_job_view(rt: Runtime, owner: str, job_id: str) -> dict[str, Any]:
    """The `data` of a delivery: the job view without items, as GET /jobs lists it."""
    return await get_job(rt, owner, job_id, with_items=False)
