"""Hands queued work to the GPU workers through tollgate's own dispatch order.

`admit` (POST /jobs/{id}/execute) puts a job in its queue's order; the dispatcher
(service/flusher/dispatcher.py) `hand`s its batches to RQ as workers have room; the flusher
`requeue`s a queued job nobody started (its order entry, its handed batches if RQ lost
them). The one place batches enter RQ: every RQ job id is deterministic, so no path runs a
batch twice (docs/scheduling.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
from rq import Queue

from service.contract import BatchItem, callback_token, input_key, make_queue, output_key
from service.runtime import Runtime
from service.state.due import DueIndex
from service.state.fsm import JobState
from service.state.queue import enqueue_job
from service.state.records import JobRecord
from service.state.sched import Admitted, SchedReads, SchedState

log = logging.getLogger(__name__)

# What admit and the dispatcher read of a job hash beyond its JobRecord.
SCHED_FIELDS = ("queue", "priority", "start_deadline", "next_batch", "batches")


@dataclass(frozen=True, slots=True)
class SchedFields:
    queue: str
    priority: str
    start_deadline_ms: int | None
    next_batch: int
    batches: int


def model_gone(rt: Runtime, job: JobRecord) -> bool:
    """The model fixed on the job left the configuration: dispatch fails the job, refunded.
    (A job of version 1 named none: the default model runs it.)"""
    return job.model is not None and job.model not in rt.models


def queue_of(rt: Runtime, job: JobRecord) -> str:
    return rt.models.get(job.model).queue


def plan_weights(rt: Runtime) -> str:
    return rt.settings.plan_weights


async def sched_fields(rt: Runtime, job_id: str) -> SchedFields | None:
    raw = await SchedReads(rt.core).job_fields(job_id, SCHED_FIELDS)
    if raw[0] is None:
        return None
    return SchedFields(str(raw[0]), str(raw[1] or "normal"),
                       int(raw[2]) if raw[2] else None, int(raw[3] or 0), int(raw[4] or 0))


async def _fail_gone_model(rt: Runtime, job: JobRecord) -> None:
    log.warning("job %s: model %r is no longer configured; failing the job", job.id,
                job.model)
    await rt.core.settle(job.id, job.user_id, JobState.FAILED, from_states=(JobState.QUEUED,),
                         reason=f"model {job.model!r} is no longer served",
                         flush_delay_ms=rt.settings.flush_delay * 1000)


async def admit(rt: Runtime, job: JobRecord) -> Admitted | None:
    """Puts an uploaded (or queued: a retried execute) job in its queue's dispatch order.
    None when its model is gone (the job failed, refunded)."""
    if model_gone(rt, job):  # queued, then failed: only a job handed on ends failed
        if job.state == JobState.UPLOADED:
            await rt.core.transition(job.id, JobState.UPLOADED, JobState.QUEUED,
                                     owner=job.user_id)
        await _fail_gone_model(rt, job)
        return None
    model = rt.models.get(job.model)
    sched = SchedState(rt.core)
    priority = (await sched_fields(rt, job.id) or SchedFields("", "normal", None, 0, 0)).priority
    admitted = await sched.admit(
        job.id, job.user_id, queue=model.queue, vtime=await sched.vtime(model.queue, priority),
        batch_size=model.batch_size, weights=plan_weights(rt))
    if admitted.score:  # also on a repeat: the first call may have died before the order
        await sched.place(model.queue, job.id, admitted.score, items=job.total_items,
                          deadline_ms=admitted.deadline_ms, priority=priority)
    return admitted


def rq_queue(rt: Runtime, name: str) -> Queue:
    return rt.queue if name == rt.queue.name else make_queue(rt.queue_connection, name)


async def enqueue_batches(rt: Runtime, job: JobRecord, batches: range, *, new_only: bool,
                          at_front: bool = False) -> list[str]:
    """Enqueues the job's batches `batches` (fresh presigned URLs, its callback token)."""
    if job.items is None:
        raise ValueError(f"job {job.id}: read without its items")
    job_id = job.id
    model = rt.models.get(job.model)
    settings, storage = rt.settings, rt.storage
    ttl = settings.hold_ttl + settings.result_url_ttl
    size = model.batch_size
    wanted = range(batches.start * size, min(batches.stop * size, len(job.items)))
    items = [
        BatchItem(
            index=index, name=item["name"], content_type=item["content_type"],
            input_url=storage.presign_download(input_key(job_id, index), ttl, internal=True),
            # Outputs: any Content-Type (the processor decides it), up to the item size limit.
            output_url=storage.presign_upload(output_key(job_id, index), None,
                                              settings.max_item_size, ttl, internal=True).url,
            output_key=output_key(job_id, index), size=item.get("size"),
        )
        for index, item in enumerate(job.items) if index in wanted
    ]
    token = callback_token(rt.callback_secret, job_id, job.user_id)
    queue = rq_queue(rt, model.queue)
    return await anyio.to_thread.run_sync(lambda: enqueue_job(
        queue, job_id=job_id, callback_url=f"{settings.worker_url}/jobs/{job_id}/callback",
        callback_token=token, items=items, batch_size=size,
        lease_ttl_s=settings.lease_ttl, timeout_s=max(600, settings.lease_ttl * 10),
        params=job.params or {}, batches=batches, new_only=new_only, at_front=at_front,
    ))


async def requeue(rt: Runtime, job_id: str) -> None:
    """The flusher's visit to a queued job nobody started: its place in the order again
    (a crash may have left it out), and its handed batches again if RQ lost them."""
    job = await rt.core.job_snapshot(job_id)
    if job is None or job.state != JobState.QUEUED or job.items is None:
        return
    if model_gone(rt, job):
        await _fail_gone_model(rt, job)
        return
    fields = await sched_fields(rt, job_id)
    if fields is None or not fields.queue:  # queued before the dispatch order: all of it
        await enqueue_batches(rt, job, range(0, 1 << 30), new_only=False)
        return
    sched = SchedReads(rt.core)
    score = await sched.waiting_place(job_id)
    if score is not None:
        size = rt.models.get(job.model).batch_size
        await sched.place(fields.queue, job_id, repr(score),
                          items=max(0, job.total_items - fields.next_batch * size),
                          deadline_ms=fields.start_deadline_ms, priority=fields.priority)
    if fields.next_batch:
        await enqueue_batches(rt, job, range(0, fields.next_batch), new_only=False)


async def leave_order(rt: Runtime, job_id: str) -> None:
    """Takes an ended job out of its queue's order now (the dispatcher would drop it when
    it met it; meanwhile it would count in the places of the jobs behind it)."""
    try:
        fields = await sched_fields(rt, job_id)
        if fields is not None and fields.queue:
            await SchedState(rt.core).place(fields.queue, job_id, "")
    except Exception:  # the dispatcher drops it when it meets it
        log.warning("job %s: not taken out of the dispatch order now", job_id, exc_info=True)


async def rebuild_order(rt: Runtime, sched: SchedReads) -> int:
    """Puts every waiting job of the buckets in use back in its queue's order (a crash
    after a bucket's script and before the order's write leaves one out); returns how many."""
    core = rt.core
    placed = 0
    for bucket in await DueIndex(core).buckets_in_use():
        for job_id, score in await sched.bucket_waiting(bucket):
            fields = await sched_fields(rt, job_id)
            job = await core.job(job_id)
            if (fields is None or job is None or not fields.queue
                    or job.state not in (JobState.QUEUED, JobState.RUNNING)):
                await sched.drop_waiting(bucket, job_id)
                continue
            size = rt.models.get(job.model).batch_size if job.model in \
                rt.models or job.model is None else 1
            await sched.place(
                fields.queue, job_id, repr(score),
                items=max(0, job.total_items - fields.next_batch * size),
                deadline_ms=fields.start_deadline_ms if job.state == JobState.QUEUED
                else None, priority=fields.priority)
            placed += 1
    return placed
