"""Hands a job's items to the GPU workers: RQ jobs of batches with deterministic ids.

The RQ job id is derived from the tollgate job id and the batch number, so enqueueing the
same job twice (the flusher re-enqueueing a queued job nobody started, a retried execute)
leaves a live batch alone and only recreates one that is gone or over. The payload is plain
JSON under RQ's JSONSerializer (no pickle in Redis); every worker must use the same one:
`tollgate worker` does, a bare `rq worker` needs `--serializer json`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rq import Queue
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from service.contract import (
    JOB_FUNCTION,
    ROOM_KEY,
    SERIALIZER,
    BatchItem,
    batch_payload,
    make_queue,
    rq_job_id,
)

RESULT_TTL_S = 600
FAILURE_TTL_S = 86_400
# A batch in one of these states will still run (or is running): enqueueing again would
# only run it twice.
LIVE_STATUSES = frozenset(
    {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
)


def _is_live(queue: Queue, rq_id: str) -> bool:
    """True when the batch will still run; deletes a finished/failed/broken one."""
    try:
        job = Job.fetch(rq_id, connection=queue.connection, serializer=SERIALIZER)
    except NoSuchJobError:
        return False
    if job.get_status(refresh=False) in LIVE_STATUSES:
        return True
    # Over (finished, failed, stopped, canceled): drop it and its registry entries so the
    # new run starts clean under the same id.
    job.delete()
    return False


def enqueue_job(
    queue: Queue,
    *,
    job_id: str,
    callback_url: str,
    callback_token: str,
    items: list[BatchItem],
    batch_size: int,
    lease_ttl_s: int,
    timeout_s: int,
    params: Mapping[str, Any] | None = None,
    batches: range | None = None,
    new_only: bool = False,
    at_front: bool = False,
) -> list[str]:
    """Enqueues every batch of the job (or those of `batches`) that is not live; returns
    their RQ ids. `new_only`: a batch whose RQ job exists in any state was handed already
    (the dispatcher's retry after a kill) and is left alone, never run twice. `at_front`:
    before every batch waiting in RQ (priority high).

    Synchronous (RQ is): call it from async code through a thread.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if queue.serializer is not SERIALIZER:
        queue = make_queue(queue.connection, queue.name)
    ordered = sorted(items, key=lambda item: item.index)
    grouped: dict[int, list[BatchItem]] = {}
    for item in ordered:  # a batch's number comes from its items' indexes
        grouped.setdefault(item.index // batch_size, []).append(item)
    ids = []
    # At the front (a high-priority job's batches), the last is pushed first.
    for batch_no, batch in sorted(grouped.items(), reverse=at_front):
        if batches is not None and batch_no not in batches:
            continue
        rq_id = rq_job_id(job_id, batch_no)
        ids.append(rq_id)
        if not new_only and _is_live(queue, rq_id):
            continue
        payload = batch_payload(
            job_id=job_id, batch_no=batch_no, callback_url=callback_url,
            callback_token=callback_token, lease_ttl_s=lease_ttl_s,
            items=batch, params=params,
        )
        try:
            # unique=True checks and pushes in one Lua script: two enqueuers racing on the
            # same batch push it once.
            queue.enqueue_call(
                JOB_FUNCTION, args=(payload,), job_id=rq_id, timeout=timeout_s,
                result_ttl=RESULT_TTL_S, failure_ttl=FAILURE_TTL_S,
                description=f"tollgate job {job_id} batch {batch_no}", unique=True,
                at_front=at_front,
            )
        except DuplicateJobError:
            continue
    return ids


async def queue_depths_async(client: Any, names: list[str]) -> dict[str, int]:
    """queue_depths over an asyncio client: one round trip, no thread."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.llen(Queue.redis_queue_namespace_prefix + name)
    return {name: int(depth) for name, depth in zip(names, await pipe.execute(), strict=True)}


async def wait_for_signal(client: Any, names: list[str], timeout_s: float) -> bool:
    """Until a worker of one of the queues took a batch (contract.signal_room), or
    `timeout_s`: one blocking pop over an asyncio client on RQ's Redis."""
    popped = await client.blpop([ROOM_KEY % name for name in names], timeout=timeout_s)
    return popped is not None


def queue_depths(connection: Any, names: list[str]) -> dict[str, int]:
    """Jobs waiting in each RQ queue (LLEN of its list), in one round trip. Synchronous."""
    pipe = connection.pipeline(transaction=False)
    for name in names:
        pipe.llen(Queue.redis_queue_namespace_prefix + name)
    return {name: int(depth) for name, depth in zip(names, pipe.execute(), strict=True)}


def live_workers(connection: Any, names: list[str]) -> dict[str, int]:
    """Workers serving each RQ queue whose heartbeat key is still there: RQ's registry of
    workers by queue keeps a killed worker's entry until a cleanup, its key expires on its
    own. Two round trips. Synchronous."""
    pipe = connection.pipeline(transaction=False)
    for name in names:
        pipe.smembers(WORKERS_BY_QUEUE_KEY % name)
    members = [sorted(_text(key) for key in found) for found in pipe.execute()]
    pipe = connection.pipeline(transaction=False)
    for keys in members:
        for key in keys:
            pipe.exists(key)
    alive = iter(pipe.execute())
    return {name: sum(1 for _ in keys if next(alive)) for name, keys in zip(names, members,
                                                                          strict=True)}


class LiveWorkers:
    """live_workers read at most every `ttl_s` per process: a job view and GET /models
    cost no RQ round trip each."""

    def __init__(self, connection: Any, ttl_s: float = 2.0) -> None:
        self.connection = connection
        self.ttl_s = ttl_s
        self._read_at = -ttl_s
        self._counts: dict[str, int] = {}

    async def counts(self, names: list[str]) -> dict[str, int]:
        import time

        import anyio

        if time.monotonic() - self._read_at >= self.ttl_s or set(names) - set(self._counts):
            self._counts = await anyio.to_thread.run_sync(
                lambda: live_workers(self.connection, names))
            self._read_at = time.monotonic()
        return self._counts


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
