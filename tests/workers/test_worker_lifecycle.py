"""`tollgate worker --model NAME` in a subprocess: its model's queue and processor, setup()
once per process (in-process) or per work-horse (--fork), and a timeout that works without a
fork."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rq.job import Job, JobStatus

from service.contract import SERIALIZER, make_queue
from tests.workers.conftest import FakeApi, enqueue_text_items, unique_job_id

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.redis


def models_file(tmp_path: Path, prefix: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(f"""
[models.plain]
processor = "workers.processors.noop:passthrough"
price_per_item = 1
queue = "{prefix}-plain"
default = true

[models.counting]
processor = "tests.workers.counting_processor:Counting"
price_per_item = 2
queue = "{prefix}-counting"

[models.slow]
processor = "tests.workers.counting_processor:slow_first_item"
price_per_item = 2
queue = "{prefix}-slow"
""")
    return path


def enqueue(queue: Any, api: FakeApi, count: int, *, timeout_s: int = 120) -> tuple[str, list[str]]:
    job_id = unique_job_id(queue.name)
    return job_id, enqueue_text_items(queue, api, job_id, count, timeout_s=timeout_s)


def run_worker(tmp_path: Path, redis_url: str, prefix: str, *args: str
               ) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, int]]]:
    trace = tmp_path / "trace.txt"
    trace.touch()
    env = {**os.environ, "TOLLGATE_REDIS_URL": redis_url,
           "TOLLGATE_MODELS": str(models_file(tmp_path, prefix)),
           "TOLLGATE_TEST_TRACE": str(trace)}
    env.pop("TOLLGATE_QUEUE_REDIS_URL", None)
    done = subprocess.run([sys.executable, "-m", "service.cli.main", "worker", "--burst", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    events = [(line.split()[0], int(line.split()[1])) for line in trace.read_text().splitlines()]
    return done, events


def test_an_in_process_worker_sets_its_processor_up_once_for_every_batch(
    sync_redis: Any, redis_url: str, key_prefix: str, fake_api: FakeApi, tmp_path: Path
) -> None:
    queue = make_queue(sync_redis, f"{key_prefix}-counting")
    job_id, ids = enqueue(queue, fake_api, 6)  # three batches
    other = make_queue(sync_redis, f"{key_prefix}-plain")
    _, other_ids = enqueue(other, fake_api, 2)

    done, events = run_worker(tmp_path, redis_url, key_prefix, "--model", "counting")
    assert done.returncode == 0, done.stderr

    assert [event for event, _ in events] == ["setup", "batch", "batch", "batch"]
    assert {pid for _, pid in events} == {events[0][1]}  # all in the worker's own process
    reports = [r for r in fake_api.item_reports() if r["idempotency_key"].startswith(job_id)]
    assert sorted(r["item_index"] for r in reports) == list(range(6))
    assert [Job.fetch(i, connection=sync_redis, serializer=SERIALIZER).get_status()
            for i in ids] == [JobStatus.FINISHED] * 3
    # The other model's queue is not this worker's.
    assert Job.fetch(other_ids[0], connection=sync_redis,
                     serializer=SERIALIZER).get_status() == JobStatus.QUEUED


def test_a_forking_worker_sets_up_in_each_work_horse_never_in_itself(
    sync_redis: Any, redis_url: str, key_prefix: str, fake_api: FakeApi, tmp_path: Path
) -> None:
    queue = make_queue(sync_redis, f"{key_prefix}-counting")
    enqueue(queue, fake_api, 4)  # two batches

    done, events = run_worker(tmp_path, redis_url, key_prefix, "--model", "counting", "--fork")
    assert done.returncode == 0, done.stderr

    assert [event for event, _ in events] == ["setup", "batch", "setup", "batch"]
    horses = [pid for _, pid in events]
    assert horses[0] == horses[1] and horses[2] == horses[3] and horses[0] != horses[2]
    assert len(fake_api.item_reports()) == 4


def test_an_in_process_worker_times_a_batch_out_and_goes_on(
    sync_redis: Any, redis_url: str, key_prefix: str, fake_api: FakeApi, tmp_path: Path
) -> None:
    queue = make_queue(sync_redis, f"{key_prefix}-slow")
    _, ids = enqueue(queue, fake_api, 4, timeout_s=1)

    done, _ = run_worker(tmp_path, redis_url, key_prefix, "--model", "slow")
    assert done.returncode == 0, done.stderr

    reports = {r["item_index"]: r for r in fake_api.item_reports()}
    assert [(i, reports[i]["ok"]) for i in range(4)] == [
        (0, False), (1, False), (2, True), (3, True)]
    assert "RQ timeout" in reports[0]["error"]
    assert [Job.fetch(i, connection=sync_redis, serializer=SERIALIZER).get_status()
            for i in ids] == [JobStatus.FAILED, JobStatus.FINISHED]
