"""Hands a queued job to the GPU workers: fresh presigned URLs, its callback token, RQ.

Used by `POST /jobs/{id}/execute` and by the flusher, which re-enqueues a queued job that
no worker started. Safe to repeat: the RQ job ids are deterministic.
"""

from __future__ import annotations

import logging

import anyio

from service.contract import BatchItem, callback_token, input_key, make_queue, output_key
from service.runtime import Runtime
from service.state.fsm import JobState
from service.state.queue import enqueue_job
from service.state.records import JobRecord

log = logging.getLogger(__name__)


def model_gone(rt: Runtime, job: JobRecord) -> bool:
    """The model fixed on the job left the configuration: dispatch fails the job, refunded.
    (A job of version 1 named none: the default model runs it.)"""
    return job.model is not None and job.model not in rt.models


async def dispatch(rt: Runtime, job_id: str, job: JobRecord | None = None) -> list[str]:
    """Enqueue a queued job's batches; safe to repeat (deterministic RQ job ids).

    `job`: the job with its items, when the caller has just read it."""
    job = job or await rt.core.job_snapshot(job_id)
    if job is None or job.state != JobState.QUEUED or job.items is None:
        return []
    model_name = job.model
    if model_gone(rt, job):
        # Its model left the configuration while the job waited: no worker would ever run it.
        log.warning("job %s: model %r is no longer configured; failing the job", job_id,
                    model_name)
        await rt.core.settle(job_id, job.user_id, JobState.FAILED, from_states=(JobState.QUEUED,),
                             reason=f"model {model_name!r} is no longer served",
                             flush_delay_ms=rt.settings.flush_delay * 1000)
        return []
    model = rt.models.get(model_name)
    settings, storage = rt.settings, rt.storage
    ttl = settings.hold_ttl + settings.result_url_ttl
    items = [
        BatchItem(
            index=index, name=item["name"], content_type=item["content_type"],
            input_url=storage.presign_download(input_key(job_id, index), ttl, internal=True),
            # Outputs: any Content-Type (the processor decides it), up to the item size limit.
            output_url=storage.presign_upload(output_key(job_id, index), None,
                                              settings.max_item_size, ttl, internal=True).url,
            output_key=output_key(job_id, index), size=item.get("size"),
        )
        for index, item in enumerate(job.items)
    ]
    token = callback_token(rt.callback_secret, job_id, job.user_id)
    queue = rt.queue if model.queue == rt.queue.name else make_queue(rt.queue_connection,
                                                                      model.queue)
    return await anyio.to_thread.run_sync(lambda: enqueue_job(
        queue, job_id=job_id, callback_url=f"{settings.worker_url}/jobs/{job_id}/callback",
        callback_token=token, items=items, batch_size=model.batch_size,
        lease_ttl_s=settings.lease_ttl, timeout_s=max(600, settings.lease_ttl * 10),
        params=job.params or {},
    ))
