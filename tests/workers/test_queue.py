"""Enqueueing batches on the real Redis: deterministic ids, no duplicates on re-enqueue."""

from __future__ import annotations

import json
import threading
import zlib
from typing import Any

import pytest
from rq import Queue
from rq.job import Job, JobStatus

from service.contract import JOB_FUNCTION, SERIALIZER, BatchItem, make_queue, rq_job_id
from service.state.queue import FAILURE_TTL_S, RESULT_TTL_S, enqueue_job
from tests.workers.conftest import unique_job_id

pytestmark = pytest.mark.redis


def items(count: int) -> list[BatchItem]:
    return [BatchItem(i, f"f{i}", "image/png", f"http://in/{i}", f"http://out/{i}", f"o/{i}")
            for i in range(count)]


def enqueue(queue: Queue, job_id: str, count: int = 5, batch_size: int = 2) -> list[str]:
    return enqueue_job(queue, job_id=job_id, callback_url=f"http://api/jobs/{job_id}/callback",
                       callback_token="tok", items=items(count), batch_size=batch_size,
                       lease_ttl_s=30, timeout_s=900)


def queued_ids(client: Any, queue: Queue) -> list[str]:
    return [raw.decode() for raw in client.lrange(queue.key, 0, -1)]


def stored_payload(client: Any, rq_id: str) -> Any:
    """The job's data as RQ wrote it: JSON (zlib-compressed), never a pickle."""
    raw = client.hget(f"rq:job:{rq_id}", "data")
    return json.loads(zlib.decompress(raw))


def test_rq_job_ids_are_deterministic() -> None:
    assert rq_job_id("01abc-7", 0) == "tg-01abc-7-0"
    assert rq_job_id("01abc-7", 12) == rq_job_id("01abc-7", 12)


def test_items_are_split_into_batches_with_plain_json_payloads(
    sync_redis: Any, key_prefix: str
) -> None:
    queue = make_queue(sync_redis, key_prefix)
    job_id = unique_job_id(key_prefix)

    ids = enqueue(queue, job_id, count=5, batch_size=2)

    assert ids == [rq_job_id(job_id, n) for n in range(3)]
    assert queued_ids(sync_redis, queue) == ids
    func, _instance, args, kwargs = stored_payload(sync_redis, ids[2])
    assert func == JOB_FUNCTION and kwargs == {}
    [payload] = args
    assert payload == {
        "job_id": job_id, "batch_no": 2, "rq_job_id": ids[2],
        "callback_url": f"http://api/jobs/{job_id}/callback", "callback_token": "tok",
        "lease_ttl_s": 30,
        "items": [{"index": 4, "name": "f4", "content_type": "image/png",
                   "input_url": "http://in/4", "output_url": "http://out/4",
                   "output_key": "o/4", "size": None}],
        "params": {},  # the job's (none here): tests/workers/test_processor_params.py
    }
    job = Job.fetch(ids[0], connection=sync_redis, serializer=SERIALIZER)
    assert [item["index"] for item in job.args[0]["items"]] == [0, 1]
    assert (job.timeout, job.result_ttl, job.failure_ttl) == (900, RESULT_TTL_S, FAILURE_TTL_S)


def test_enqueueing_again_leaves_live_batches_alone(sync_redis: Any, key_prefix: str) -> None:
    queue = make_queue(sync_redis, key_prefix)
    job_id = unique_job_id(key_prefix)
    first = enqueue(queue, job_id)

    assert enqueue(queue, job_id) == first
    assert enqueue(queue, job_id) == first
    assert queued_ids(sync_redis, queue) == first


def test_over_or_missing_batches_are_recreated_but_running_ones_are_not(
    sync_redis: Any, key_prefix: str
) -> None:
    queue = make_queue(sync_redis, key_prefix)
    job_id = unique_job_id(key_prefix)
    gone, failed, finished, running = enqueue(queue, job_id, count=4, batch_size=1)
    # Take every batch off the queue as workers would, and end them differently.
    sync_redis.delete(queue.key)
    Job.fetch(gone, connection=sync_redis, serializer=SERIALIZER).delete()
    for rq_id, status in ((failed, JobStatus.FAILED), (finished, JobStatus.FINISHED),
                          (running, JobStatus.STARTED)):
        Job.fetch(rq_id, connection=sync_redis, serializer=SERIALIZER).set_status(status)
    queue.failed_job_registry.add(
        Job.fetch(failed, connection=sync_redis, serializer=SERIALIZER), ttl=600)

    assert enqueue(queue, job_id, count=4, batch_size=1) == [gone, failed, finished, running]

    assert queued_ids(sync_redis, queue) == [gone, failed, finished]
    for rq_id in (gone, failed, finished):
        job = Job.fetch(rq_id, connection=sync_redis, serializer=SERIALIZER)
        assert job.get_status() == JobStatus.QUEUED
    assert failed not in queue.failed_job_registry.get_job_ids(cleanup=False)
    running_job = Job.fetch(running, connection=sync_redis, serializer=SERIALIZER)
    assert running_job.get_status() == JobStatus.STARTED


def test_racing_enqueuers_push_each_batch_once(sync_redis: Any, key_prefix: str) -> None:
    queue = make_queue(sync_redis, key_prefix)
    job_id = unique_job_id(key_prefix)
    start = threading.Barrier(8)
    results: list[list[str]] = []

    def racer() -> None:
        start.wait()
        results.append(enqueue(queue, job_id, count=6, batch_size=1))

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    expected = [rq_job_id(job_id, n) for n in range(6)]
    assert results == [expected] * 8
    assert sorted(queued_ids(sync_redis, queue)) == sorted(expected)


def test_a_pickling_queue_is_given_the_json_serializer(sync_redis: Any, key_prefix: str) -> None:
    job_id = unique_job_id(key_prefix)
    [rq_id] = enqueue(Queue(key_prefix, connection=sync_redis), job_id, count=1)
    assert stored_payload(sync_redis, rq_id)[0] == JOB_FUNCTION


def test_batch_size_must_be_positive(sync_redis: Any, key_prefix: str) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        enqueue(make_queue(sync_redis, key_prefix), unique_job_id(key_prefix), batch_size=0)
