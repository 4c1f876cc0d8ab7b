"""The RQ job function: one batch of a job's items, from download to the last callback.

The payload is a `service.contract.BatchPayload` as JSON (built by
`service.state.queue.enqueue_job`), and every report a `CallbackIn`, both decoded and encoded
with the contract's Structs. Every report carries a
deterministic idempotency key, so RQ retrying a batch, or the flusher re-enqueueing it,
can never count an item twice. While the batch runs, a heartbeat thread renews the job's
running lease; a worker that dies stops renewing and the flusher settles the job.

Memory: inputs stream to spool files (only small ones stay in memory) and the processor reads
them lazily through `Item`. A batch runs in groups whose declared input sizes fit
TOLLGATE_WORKER_MAX_BATCH_BYTES (an item larger than that runs alone): download, process,
upload and report one group, then drop its files, then the next.

Cancel: the heartbeat renews at least every CANCEL_CHECK_S; a refused renewal (the job was
canceled or finished) stops the batch within one item (`JobStopped` on the next item read),
and nothing more is uploaded or reported.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from types import TracebackType
from typing import Any, TypeVar

import httpx
import msgspec
from rq import get_current_job
from rq.timeouts import BaseTimeoutException

from service.contract import (
    MAX_REPORT_ITEMS,
    BatchItem,
    CallbackIn,
    ItemReportIn,
    clean_error,
    describe_error,
    frozen_params,
    item_callback_key,
    read_batch,
)
from service.settings import get_settings
from workers.callbacks import (
    DEFAULT_TIMEOUT,
    CallbackClient,
    CallbackError,
    JobClosed,
    RetryingClient,
)
from workers.inputs import download as download  # re-exported: bench/end_to_end.py
from workers.inputs import item_groups
from workers.processors import (
    NO_PARAMS,
    Item,
    JobStopped,
    Output,
    Processor,
    ensure_setup,
    load_processor,
)

log = logging.getLogger(__name__)

IO_THREADS = 8
MAX_REPORT_BYTES = 256 * 1024
# A running batch learns of a cancel through its lease renewal at most this long after it.
CANCEL_CHECK_S = 1.0
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Batch:
    job_id: str
    rq_job_id: str
    callback_url: str
    callback_token: str
    lease_ttl_s: float
    items: list[BatchItem]
    # The job's params, read-only (every Item of the batch gets this one mapping).
    params: Mapping[str, Any] = field(default_factory=lambda: NO_PARAMS)

    @classmethod
    def from_payload(cls, payload: object) -> Batch:
        """The batch an RQ job carries (contract.read_batch checks every field)."""
        wire = read_batch(payload)
        return cls(job_id=wire.job_id, rq_job_id=wire.rq_job_id, callback_url=wire.callback_url,
                   callback_token=wire.callback_token, lease_ttl_s=wire.lease_ttl_s,
                   items=wire.items, params=frozen_params(wire.params))


@lru_cache(maxsize=8)
def cached_processor(spec: str) -> Processor:
    """One instance per spec and process: its setup() then runs once per process."""
    return load_processor(spec)


# Queue name -> processor spec, as `tollgate worker --model` serves them; a queue not named
# here runs TOLLGATE_PROCESSOR (a version 1 worker).
_SERVED: dict[str, str] = {}


def serve_queue(queue_name: str, processor_spec: str) -> None:
    """Batches taken from this queue, in this process, run this processor."""
    _SERVED[queue_name] = processor_spec


def processor_spec_for(queue_name: str | None) -> str:
    if queue_name is not None and queue_name in _SERVED:
        return _SERVED[queue_name]
    return get_settings().processor


@lru_cache(maxsize=1)
def shared_http() -> httpx.Client:
    """One client per process: building one loads the CA store (~0.7 s), far too slow per batch.

    Built in the worker before it forks, each work-horse inherits it with an empty pool.
    """
    return httpx.Client(timeout=DEFAULT_TIMEOUT)


def preload(processor_spec: str, *, setup: bool) -> None:
    """Pays the imports, the processor load and the HTTP client once, before the first batch.

    `setup`: also run the processor's setup() now (in-process workers). A worker that forks
    must not: CUDA started in a parent is unusable in its children.
    """
    processor = cached_processor(processor_spec)
    if setup and ensure_setup(processor):
        log.info("processor %s is set up", processor_spec)
    shared_http()


def process_batch(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point (`workers.jobs.process_batch`): the processor served for the batch's
    queue (`serve_queue`), else TOLLGATE_PROCESSOR."""
    job = get_current_job()
    processor = cached_processor(processor_spec_for(job.origin if job else None))
    return run_batch(Batch.from_payload(payload), processor, RetryingClient(shared_http()),
                     max_batch_bytes=get_settings().worker_max_batch_bytes)


class LeaseHeartbeat:
    """Renews the job's running lease every lease_ttl/3 seconds, and at least every
    CANCEL_CHECK_S, from a daemon thread.

    A 409 from the API (renew_lease.lua: the job is canceled or finished) sets `closed`: the
    next item read raises JobStopped and the batch loop stops between steps, so no work
    nobody will pay for is finished, uploaded or reported.
    """

    def __init__(self, callbacks: CallbackClient, batch: Batch) -> None:
        self.callbacks = callbacks
        self.batch = batch
        self.interval_s = max(min(batch.lease_ttl_s / 3, CANCEL_CHECK_S), 0.05)
        self.closed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lease-{batch.rq_job_id}", daemon=True
        )

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        beat = 0
        while not self._stop.wait(self.interval_s):
            beat += 1
            key = f"{self.batch.rq_job_id}:heartbeat:{beat}:{uuid.uuid4().hex[:8]}"
            try:
                self.callbacks.post(CallbackIn(event="heartbeat", idempotency_key=key))
            except JobClosed:
                self.closed.set()
                return
            except CallbackError as exc:
                # The lease outlives two missed beats; the next one may get through.
                log.warning("lease heartbeat for %s failed: %s", self.batch.job_id, exc)


def _checked(items: list[Item], outputs: object) -> list[Output]:
    """The processor's outputs in item order; raises if it broke the protocol."""
    if not isinstance(outputs, list):
        raise TypeError(f"processor returned {type(outputs).__name__}, not a list")
    by_index = {out.index: out for out in outputs if isinstance(out, Output)}
    missing = [item.index for item in items if item.index not in by_index]
    if missing:
        raise ValueError(f"processor returned no output for items {missing}")
    return [by_index[item.index] for item in items]


def run_processor(processor: Processor, items: list[Item]) -> list[Output]:
    """The whole batch at once; after a batch-wide exception, item by item."""
    if not items:
        return []
    try:
        return _checked(items, processor(items))
    except (BaseTimeoutException, JobStopped):
        raise
    except Exception as exc:
        if len(items) == 1:
            return [Output.failed(items[0].index, describe_error("processor error", exc))]
        log.warning("processor failed on a batch of %d, retrying item by item: %s", len(items), exc)
    return [out for item in items for out in run_processor(processor, [item])]


def upload(http: RetryingClient, spec: BatchItem, output: Output) -> Output:
    if output.error is not None or output.data is None:
        if output.error is not None:
            return output
        return Output.failed(spec.index, "processor returned no data")
    try:
        response = http.request(
            "PUT", spec.output_url, content=output.data,
            headers={"Content-Type": output.content_type},
        )
    except CallbackError as exc:
        return Output.failed(spec.index, f"upload failed: {exc}")
    if not response.is_success:
        return Output.failed(spec.index, f"upload failed: HTTP {response.status_code}")
    return output


def item_entry(batch: Batch, spec: BatchItem, output: Output) -> ItemReportIn:
    """One item's entry of a batched report (`event: "items"`)."""
    key = item_callback_key(batch.job_id, spec.index)
    if output.error is None:
        return ItemReportIn(index=spec.index, ok=True, idempotency_key=key,
                            output_key=spec.output_key)
    return ItemReportIn(index=spec.index, ok=False, idempotency_key=key,
                        error=clean_error(output.error), billable=output.billable)


def report_chunks(entries: list[ItemReportIn]) -> list[list[ItemReportIn]]:
    """One request's worth each: at most MAX_REPORT_ITEMS entries and about
    MAX_REPORT_BYTES of JSON, well under the API's body limit even when every item failed
    with a long error."""
    chunks: list[list[ItemReportIn]] = [[]]
    size = 0
    for entry in entries:
        entry_size = len(msgspec.json.encode(entry)) + 1
        if chunks[-1] and (len(chunks[-1]) >= MAX_REPORT_ITEMS
                           or size + entry_size > MAX_REPORT_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += entry_size
    return [chunk for chunk in chunks if chunk]


def report_items(callbacks: CallbackClient, entries: list[ItemReportIn],
                 reported: set[int]) -> None:
    """The batch's results in one request (more only for a very large batch)."""
    for chunk in report_chunks(entries):
        callbacks.post(CallbackIn(event="items", items=chunk))
        reported.update(entry.index for entry in chunk)


def run_batch(batch: Batch, processor: Processor, http: RetryingClient, *,
              max_batch_bytes: int | None = None) -> dict[str, Any]:
    """`max_batch_bytes`: the declared input bytes one group may hold (item_groups); None:
    the whole batch at once."""
    callbacks = CallbackClient(batch.callback_url, batch.callback_token, http)
    summary: dict[str, Any] = {
        "job_id": batch.job_id, "rq_job_id": batch.rq_job_id, "ok": 0, "failed": 0,
        "stopped": None,
    }
    try:
        callbacks.post(CallbackIn(event="started", idempotency_key=f"{batch.rq_job_id}:started"))
    except JobClosed as closed:
        summary["stopped"] = str(closed)
        return summary

    reported: set[int] = set()
    with LeaseHeartbeat(callbacks, batch) as heartbeat:
        try:
            for group in item_groups(batch.items, max_batch_bytes):
                _process_and_report(batch, group, processor, http, callbacks, heartbeat,
                                    reported, summary)
        except (JobClosed, JobStopped) as closed:
            summary["stopped"] = str(closed)
        except BaseTimeoutException:
            _report_leftovers(batch, callbacks, reported, "the batch ran past its RQ timeout")
            raise
    log.info("batch %s: %s", batch.rq_job_id, summary)
    return summary


def in_parallel(fn: Callable[[_T], _R], args: list[_T]) -> list[_R]:
    """Runs the batch's downloads or uploads side by side; results in argument order."""
    if len(args) <= 1:
        return [fn(arg) for arg in args]
    pool = ThreadPoolExecutor(max_workers=min(IO_THREADS, len(args)),
                              thread_name_prefix="tollgate-io")
    try:
        return list(pool.map(fn, args))
    finally:
        # On a timeout or error nobody waits for the stragglers; their results are dropped.
        pool.shutdown(wait=False, cancel_futures=True)


def _process_and_report(
    batch: Batch,
    group: list[BatchItem],
    processor: Processor,
    http: RetryingClient,
    callbacks: CallbackClient,
    heartbeat: LeaseHeartbeat,
    reported: set[int],
    summary: dict[str, Any],
) -> None:
    """One group of the batch: download, process, upload, report; its files go after."""
    def check_open() -> None:
        if heartbeat.closed.is_set():
            raise JobClosed("the lease heartbeat was refused")

    check_open()
    with tempfile.TemporaryDirectory(prefix="tollgate-batch-") as folder:
        fetched = in_parallel(lambda spec: download(http, spec, batch.params, folder=folder,
                                                    stop=heartbeat.closed), group)
        check_open()
        results = {out.index: out for out in fetched if isinstance(out, Output)}
        inputs = [item for item in fetched if isinstance(item, Item)]
        try:
            for output in set_up_and_run(processor, inputs):
                results[output.index] = output
        finally:
            for item in inputs:
                item.release()
        check_open()
        uploaded = in_parallel(lambda spec: upload(http, spec, results[spec.index]), group)

    check_open()
    report_items(callbacks, [item_entry(batch, spec, output)
                             for spec, output in zip(group, uploaded, strict=True)],
                 reported)
    for output in uploaded:
        summary["ok" if output.error is None else "failed"] += 1


def set_up_and_run(processor: Processor, items: list[Item]) -> list[Output]:
    """setup() once per process, then the batch; a failed setup fails this batch's items."""
    try:
        ensure_setup(processor)
    except (BaseTimeoutException, JobStopped):
        raise
    except Exception as exc:
        log.exception("processor setup failed; failing the batch's items")
        error = describe_error("processor setup failed", exc)
        return [Output.failed(item.index, error) for item in items]
    return run_processor(processor, items)


def _report_leftovers(
    batch: Batch, callbacks: CallbackClient, reported: set[int], error: str
) -> None:
    """Fails the items a dying batch never reported, so the job settles now, not at lease end."""
    entries = [item_entry(batch, spec, Output.failed(spec.index, error))
               for spec in batch.items if spec.index not in reported]
    try:
        report_items(callbacks, entries, reported)
    except (JobClosed, CallbackError):
        return
