"""Real RQ workers run the enqueued batches end to end: payload, serializer, job function."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from rq import SimpleWorker
from rq.job import Job, JobStatus

from service.contract import ROOM_KEY, SERIALIZER, BatchItem, make_queue, signal_room
from service.settings import Settings
from service.state.clients import queue_redis
from service.state.queue import enqueue_job, wait_for_signal
from tests.workers.conftest import TOKEN, FakeApi, enqueue_text_items, unique_job_id
from workers.processors import Item, Output
from workers.processors.noop import passthrough
from workers.runner import TollgateSimpleWorker, TollgateWorker, start_embedded_worker_thread

ROOT = Path(__file__).resolve().parents[2]


def assert_job_reported(api: FakeApi, job_id: str, count: int, ok: list[bool]) -> None:
    reports = sorted(api.item_reports(), key=lambda r: r["item_index"])
    assert [r["item_index"] for r in reports] == list(range(count))
    assert [r["ok"] for r in reports] == ok
    assert {r["idempotency_key"] for r in reports} == {f"{job_id}:item:{i}" for i in range(count)}
    assert api.events().count("started") == (count + 1) // 2


@pytest.fixture
def restored_signals() -> Iterator[None]:
    """RQ's worker installs SIGINT/SIGTERM handlers for good; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.redis
def test_simple_worker_burst_runs_every_batch(
    sync_redis: Any, key_prefix: str, fake_api: FakeApi, processor_env: Any,
    restored_signals: None,
) -> None:
    processor_env("workers.processors.noop:fail_odd")
    queue = make_queue(sync_redis, key_prefix)
    job_id = unique_job_id(key_prefix)
    ids = enqueue_text_items(queue, fake_api, job_id, 5)

    worker = TollgateSimpleWorker([queue], connection=sync_redis, serializer=SERIALIZER,
                                  name=f"{key_prefix}-simple")
    assert worker.work(burst=True)

    assert_job_reported(fake_api, job_id, 5, [True, False, True, False, True])
    for rq_id in ids:
        job = Job.fetch(rq_id, connection=sync_redis, serializer=SERIALIZER)
        assert job.get_status() == JobStatus.FINISHED
        assert job.return_value()["rq_job_id"] == rq_id
    assert fake_api.outputs[f"{job_id}-4"] == ("text/plain", b"data 4")
    # Each batch taken told the dispatcher the queue has room; the signal holds one element.
    assert sync_redis.lrange(ROOM_KEY % key_prefix, 0, -1) == [b"1"]


@pytest.mark.parametrize("server", ["fakeredis", "redis"])
async def test_a_workers_signal_wakes_a_waiting_dispatcher_at_once(
        server: str, request: pytest.FixtureRequest, key_prefix: str) -> None:
    """The dispatcher waits for room in RQ on a blocking pop (wait_for_signal), not by
    polling the queue's length: a worker's signal ends the wait at once, and with none the
    wait ends at its timeout."""
    import redis.asyncio as aredis

    if server == "redis":
        url = request.getfixturevalue("redis_url")
        sync, reads = request.getfixturevalue("sync_redis"), aredis.Redis.from_url(url)
    else:
        fake = fakeredis.FakeServer()
        sync, reads = fakeredis.FakeRedis(server=fake), fakeredis.FakeAsyncRedis(server=fake)
    queues = [key_prefix, f"{key_prefix}-other"]
    try:
        started = time.monotonic()
        assert not await wait_for_signal(reads, queues, 0.2)  # nothing taken: the timeout
        assert 0.15 < time.monotonic() - started < 2
        threading.Timer(0.2, signal_room, (sync, queues[1])).start()
        started = time.monotonic()
        assert await wait_for_signal(reads, queues, 10.0)
        assert time.monotonic() - started < 2  # the signal, not the 10 s timeout
        signal_room(sync, queues[0])
        signal_room(sync, queues[0])  # two batches taken before the dispatcher looked
        assert await wait_for_signal(reads, queues, 1.0)
        assert not await wait_for_signal(reads, queues, 0.1)  # one wake-up for both
    finally:
        await reads.aclose()
        sync.delete(*(ROOM_KEY % queue for queue in queues))


@pytest.mark.redis
@pytest.mark.parametrize("worker_class", [TollgateSimpleWorker, TollgateWorker])
def test_a_worker_stops_within_seconds_right_after_it_subscribed(
    sync_redis: Any, key_prefix: str, worker_class: type[SimpleWorker]
) -> None:
    """rq 2.12 listens on its pub/sub channel with 60 s waits and redis-py 8.2 joins that
    listener without a timeout: a worker stopped before its subscription was confirmed hung
    60 s in teardown (a burst worker with nothing to do, about one run in three)."""
    worker = worker_class([make_queue(sync_redis, key_prefix)], connection=sync_redis,
                          serializer=SERIALIZER, name=f"{key_prefix}-prompt")
    for _ in range(3):
        started = time.monotonic()
        worker.subscribe()
        worker.unsubscribe()
        assert time.monotonic() - started < 5


@pytest.mark.redis
@pytest.mark.parametrize("fork", [True, False])
def test_tollgate_worker_process_runs_batches(
    sync_redis: Any, redis_url: str, key_prefix: str, fake_api: FakeApi, fork: bool
) -> None:
    queue = make_queue(sync_redis, key_prefix)
    job_id = unique_job_id(key_prefix)
    ids = enqueue_text_items(queue, fake_api, job_id, 3)
    env = {**os.environ, "TOLLGATE_REDIS_URL": redis_url,
           "TOLLGATE_PROCESSOR": "workers.processors.noop:passthrough"}
    env.pop("TOLLGATE_QUEUE_REDIS_URL", None)
    code = (
        "from service.settings import get_settings\n"
        "from service.state.clients import queue_redis\n"
        "from workers.runner import run_worker\n"
        "settings = get_settings()\n"
        f"run_worker(settings, queue_redis(settings), queue_name={key_prefix!r}, burst=True, "
        f"fork={fork})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    assert_job_reported(fake_api, job_id, 3, [True, True, True])
    statuses = [Job.fetch(i, connection=sync_redis, serializer=SERIALIZER).get_status()
                for i in ids]
    assert statuses == [JobStatus.FINISHED] * 2


def test_embedded_worker_thread_runs_batches_on_fakeredis_and_stops(
    fake_api: FakeApi, processor_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor_env("workers.processors.noop:passthrough")
    server = fakeredis.FakeServer()
    monkeypatch.setattr("service.state.clients._EMBEDDED", server)
    settings = Settings(redis_url=None, queue_redis_url=None)
    thread = start_embedded_worker_thread(settings, queue_redis(settings), "embedded-test")
    try:
        queue = make_queue(fakeredis.FakeRedis(server=server), "embedded-test")
        ids = enqueue_text_items(queue, fake_api, "01embedded0000000000000000-1", 4)
        jobs = [Job.fetch(i, connection=queue.connection, serializer=SERIALIZER) for i in ids]
        for job in jobs:
            for _ in range(1200):  # a hang guard, not a speed check
                if job.get_status() in (JobStatus.FINISHED, JobStatus.FAILED):
                    break
                assert thread.is_alive()
                thread.stop_event.wait(0.05)
        assert [job.get_status() for job in jobs] == [JobStatus.FINISHED] * 2
    finally:
        thread.stop(timeout=30)
    assert not thread.is_alive()
    assert_job_reported(fake_api, "01embedded0000000000000000-1", 4, [True] * 4)


RELEASE = threading.Event()


def blocks_until_released(items: list[Item]) -> list[Output]:
    """A processor that outlives its RQ timeout; short waits let the timer's exception in."""
    for _ in range(1200):
        if RELEASE.wait(0.05):
            break
    return passthrough(items)


def test_embedded_worker_times_a_batch_out_and_fails_its_items(
    fake_api: FakeApi, processor_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off the main thread RQ cannot use SIGALRM: the timer death penalty must still fire."""
    processor_env("tests.workers.test_runner:blocks_until_released")
    server = fakeredis.FakeServer()
    monkeypatch.setattr("service.state.clients._EMBEDDED", server)
    settings = Settings(redis_url=None, queue_redis_url=None)
    thread = start_embedded_worker_thread(settings, queue_redis(settings), "slow")
    job_id = "01timeout00000000000000000-2"
    try:
        queue = make_queue(fakeredis.FakeRedis(server=server), "slow")
        fake_api.inputs["a"] = b"a"
        [rq_id] = enqueue_job(
            queue, job_id=job_id, callback_url=fake_api.callback_url(job_id),
            callback_token=TOKEN, batch_size=2, lease_ttl_s=30, timeout_s=1,
            items=[BatchItem(i, "a", "x/y", fake_api.input_url("a"), fake_api.output_url(str(i)),
                             f"o/{i}") for i in range(2)],
        )
        job = Job.fetch(rq_id, connection=queue.connection, serializer=SERIALIZER)
        for _ in range(1200):  # a hang guard, not a speed check
            if job.get_status() in (JobStatus.FINISHED, JobStatus.FAILED):
                break
            thread.stop_event.wait(0.05)
        assert job.get_status() == JobStatus.FAILED
    finally:
        RELEASE.set()
        thread.stop(timeout=30)
    reports = fake_api.item_reports()
    assert [(r["item_index"], r["ok"]) for r in reports] == [(0, False), (1, False)]
    assert all("RQ timeout" in r["error"] for r in reports)
    assert fake_api.outputs == {}
