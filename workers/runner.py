"""Starts RQ workers on tollgate's queue: a process for `tollgate worker`, a thread for `dev`.

A forking Worker runs each batch in a fresh work-horse, so a crashing processor cannot take
the worker down. The embedded fakeredis lives inside one process and a forked child's
writes to it are lost, so on the embedded default the work runs in-process (SimpleWorker).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import Any

import redis
from rq import SimpleWorker, Worker
from rq.timeouts import TimerDeathPenalty

from service.contract import SERIALIZER, make_queue
from service.settings import Settings
from workers.jobs import preload

log = logging.getLogger(__name__)


def _embedded(settings: Settings) -> bool:
    return settings.queue_redis_url is None and settings.redis_url is None


def _name(kind: str) -> str:
    return f"tollgate-{kind}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def run_worker(
    settings: Settings, connection: redis.Redis, *, queue_name: str, burst: bool,
    fork: bool = True,
) -> None:
    """Blocks until the worker stops (SIGINT/SIGTERM, or an empty queue with `burst`).

    `fork=False` runs batches in the worker process itself: no fork per batch (about 0.1 s
    each) and a GPU processor keeps its CUDA context and model between batches, at the price
    of a processor crash taking the worker down (the lease and the sweeper still settle).
    """
    queue = make_queue(connection, queue_name)
    worker_class: type[Any] = Worker if fork else SimpleWorker
    if _embedded(settings):
        log.warning(
            "no TOLLGATE_REDIS_URL: this worker sees only its own in-process fakeredis; "
            "use `tollgate dev` for the embedded system, or point it at a real Redis"
        )
        worker_class = SimpleWorker
    preload(settings.processor)
    worker = worker_class(
        [queue], connection=connection, serializer=SERIALIZER, name=_name("worker")
    )
    worker.work(burst=burst, logging_level="INFO")


class ThreadedSimpleWorker(SimpleWorker):
    """A SimpleWorker that lives on a non-main thread and stops when asked.

    Python only lets the main thread set signal handlers and receive SIGALRM: skip RQ's
    SIGINT/SIGTERM handlers and time jobs out with a timer instead of an alarm.
    """

    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args: Any, stop_event: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_event = stop_event

    def _install_signal_handlers(self) -> None:
        """Only the main thread may set signal handlers; this worker stops by its event."""

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> Any:
        # Wait in one-second slices so a stop request is seen within about a second.
        while not self.stop_event.is_set():
            result = super().dequeue_job_and_maintain_ttl(1, 1)
            if result is not None:
                return result
        return None


class EmbeddedWorkerThread(threading.Thread):
    """The worker of `tollgate dev`; `stop()` ends it after the batch in hand."""

    def __init__(self, settings: Settings, connection: redis.Redis, queue_name: str) -> None:
        super().__init__(name="tollgate-worker", daemon=True)
        self.stop_event = threading.Event()
        self.processor_spec = settings.processor
        self.worker = ThreadedSimpleWorker(
            [make_queue(connection, queue_name)],
            connection=connection,
            serializer=SERIALIZER,
            name=_name("embedded"),
            stop_event=self.stop_event,
        )

    def run(self) -> None:
        try:
            preload(self.processor_spec)
            self.worker.work(burst=False, logging_level="INFO")
        except Exception:
            log.exception("the embedded worker stopped on an error")

    def stop(self, timeout: float | None = 10.0) -> None:
        self.stop_event.set()
        self.join(timeout)


def start_embedded_worker_thread(
    settings: Settings, connection: redis.Redis, queue_name: str
) -> EmbeddedWorkerThread:
    thread = EmbeddedWorkerThread(settings, connection, queue_name)
    thread.start()
    return thread
