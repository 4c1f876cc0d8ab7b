"""Starts RQ workers on tollgate's queues: a process for `tollgate worker`, a thread for `dev`.

By default a worker runs each batch in its own process (SimpleWorker): the processor's
setup() runs once, before the first batch, and a GPU processor keeps its CUDA context and
weights between batches. A batch that runs past its RQ timeout is stopped by SIGALRM (the
worker runs on the main thread). A processor that crashes the process takes the worker down;
the job's running lease runs out and the flusher settles it, as for a killed worker.
`fork=True` (`tollgate worker --fork`) keeps RQ's forking Worker, a fresh work-horse per
batch, for processors that leak memory: each horse then pays setup() again. The embedded
fakeredis lives inside one process and a forked child's writes to it are lost, so on the
embedded default the work always runs in-process.
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

from service.contract import JOB_FUNCTION, SERIALIZER, make_queue, signal_room
from service.settings import Settings
from workers.jobs import preload, serve_queue

log = logging.getLogger(__name__)


def _embedded(settings: Settings) -> bool:
    return settings.queue_redis_url is None and settings.redis_url is None


def _name(kind: str) -> str:
    return f"tollgate-{kind}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _PromptStop:
    """Listens on the worker's pub/sub channel in one-second waits instead of RQ's 60 s.

    rq 2.12 starts the listener with `sleep_time=60`, and redis-py 8.2's
    `PubSubWorkerThread.stop()` joins it without a timeout. A worker that stops before its
    subscription was confirmed (a `--burst` worker that finds its queue already done, or a
    SIGTERM right after start) then hung for 60 s in teardown. The listener sends no command
    while it waits, so shorter waits cost Redis nothing.
    """

    def subscribe(self) -> None:
        worker: Any = self
        worker.log.info("Worker %s: subscribing to channel %s", worker.name,
                        worker.pubsub_channel_name)
        worker.pubsub = worker.connection.pubsub()
        worker.pubsub.subscribe(**{worker.pubsub_channel_name: worker.handle_payload})
        worker.pubsub_thread = worker.pubsub.run_in_thread(
            sleep_time=1, daemon=True, exception_handler=worker._pubsub_exception_handler
        )


class _SignalsRoom:
    """Tells the dispatcher when it takes a batch (contract.signal_room), so that the queue
    is filled again at once, with no polling of its length."""

    def execute_job(self, job: Any, queue: Any) -> Any:
        worker: Any = self
        if job.func_name == JOB_FUNCTION:  # a batch the dispatcher handed (not any RQ job)
            signal_room(worker.connection, queue.name)
        return super().execute_job(job, queue)  # type: ignore[misc]


class TollgateWorker(_PromptStop, _SignalsRoom, Worker):
    """RQ's forking Worker (`tollgate worker --fork`), stopping promptly (_PromptStop)."""


class TollgateSimpleWorker(_PromptStop, _SignalsRoom, SimpleWorker):
    """RQ's SimpleWorker (one process, setup() once), stopping promptly (_PromptStop)."""


def run_worker(
    settings: Settings, connection: redis.Redis, *, queue_name: str, burst: bool,
    processor: str | None = None, fork: bool = False,
) -> None:
    """Blocks until the worker stops (SIGINT/SIGTERM, or an empty queue with `burst`).

    `processor`: the spec of the model this worker serves (TOLLGATE_PROCESSOR if None).
    """
    spec = processor or settings.processor
    queue = make_queue(connection, queue_name)
    worker_class: type[Any] = TollgateWorker if fork else TollgateSimpleWorker
    if _embedded(settings):
        log.warning(
            "no TOLLGATE_REDIS_URL: this worker sees only its own in-process fakeredis; "
            "use `tollgate dev` for the embedded system, or point it at a real Redis"
        )
        worker_class = TollgateSimpleWorker
    serve_queue(queue_name, spec)
    preload(spec, setup=worker_class is TollgateSimpleWorker)
    mode = "a forked work-horse per batch" if worker_class is TollgateWorker else "in this process"
    log.info("worker on queue %r runs %s, %s", queue_name, spec, mode)
    worker = worker_class(
        [queue], connection=connection, serializer=SERIALIZER, name=_name("worker")
    )
    worker.work(burst=burst, logging_level="INFO")


class ThreadedSimpleWorker(TollgateSimpleWorker):
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

    def __init__(self, settings: Settings, connection: redis.Redis, queue_name: str,
                 processor: str | None = None) -> None:
        super().__init__(name=f"tollgate-worker-{queue_name}", daemon=True)
        self.stop_event = threading.Event()
        self.processor_spec = processor or settings.processor
        serve_queue(queue_name, self.processor_spec)
        self.worker = ThreadedSimpleWorker(
            [make_queue(connection, queue_name)],
            connection=connection,
            serializer=SERIALIZER,
            name=_name("embedded"),
            stop_event=self.stop_event,
        )

    def run(self) -> None:
        try:
            preload(self.processor_spec, setup=True)
            self.worker.work(burst=False, logging_level="INFO")
        except Exception:
            log.exception("the embedded worker stopped on an error")

    def stop(self, timeout: float | None = 10.0) -> None:
        self.stop_event.set()
        self.join(timeout)


def start_embedded_worker_thread(
    settings: Settings, connection: redis.Redis, queue_name: str, processor: str | None = None
) -> EmbeddedWorkerThread:
    thread = EmbeddedWorkerThread(settings, connection, queue_name, processor)
    thread.start()
    return thread
