"""Hands a queued job to the GPU workers: fresh presigned URLs, its callback token, RQ.

Used by `POST /jobs/{id}/execute` and by the sweeper, which re-enqueues a queued job that
no worker started. Safe to repeat: the RQ job ids are deterministic.
"""

from __future__ import annotations

import json

import anyio

from service.contract import BatchItem, callback_token, input_key, output_key
from service.runtime import Runtime
from service.state.queue import enqueue_job


async def dispatch(rt: Runtime, job_id: str) -> list[str]:
    """Enqueue a queued job's batches; safe to repeat (deterministic RQ job ids)."""
    job, _, meta_json = await rt.core.job_snapshot(job_id)
    if not job or job["state"] != "queued":
        return []
    meta = json.loads(meta_json or "[]")
    settings, storage = rt.settings, rt.storage
    ttl = settings.hold_ttl + settings.result_url_ttl
    items = [
        BatchItem(
            index=index, name=item["name"], content_type=item["content_type"],
            input_url=storage.presign_download(input_key(job_id, index), ttl),
            # Outputs: any Content-Type (the processor decides it), up to the item size limit.
            output_url=storage.presign_upload(output_key(job_id, index), None,
                                              settings.max_item_size, ttl).url,
            output_key=output_key(job_id, index),
        )
        for index, item in enumerate(meta)
    ]
    token = callback_token(rt.callback_secret, job_id, job["owner"])
    return await anyio.to_thread.run_sync(lambda: enqueue_job(
        rt.queue, job_id=job_id, callback_url=f"{settings.public_url}/jobs/{job_id}/callback",
        callback_token=token, items=items, batch_size=settings.batch_size,
        lease_ttl_s=settings.lease_ttl, timeout_s=max(600, settings.lease_ttl * 10),
    ))
