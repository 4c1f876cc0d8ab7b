"""The sweeper (`tollgate flusher`): visits the buckets with due work and finishes the work
no request will do.

Per bucket and pass: cancel jobs whose upload hold expired (refunding them), fail running
jobs whose lease ran out (a killed worker), hand queued jobs nobody started back to the
queue, and move finished jobs and credit-ledger entries into SQL.

Which buckets: the due index (service/state/due.py), so an idle pass costs the same for 64
or 16,384 buckets (16 small scripts, one per index shard). Core marks a bucket after each
script that leaves due work there (`ZADD LT` on its shard; a bucket's own script cannot,
the shards live in other hash slots). A pass takes the due buckets (each moved to a
placeholder score), visits them, and settles each to the next due time read from its keys
after the visit; a write that lands during the visit lowers the score, and the settle keeps
the lower one. The marks are a second call after the script, so a crash between the two
loses one: the safety net (`reindex_buckets`) reads the next due time of every bucket in
use (`tg:buckets`: Core adds a bucket after each script that provisions, funds or reserves
there) every FULL_SWEEP_S and of every bucket on the flusher's first pass, and lowers the
index to it. A saturated bucket
(a heavy user's backlog) is taken again at once, up to MAX_ROUNDS rounds a pass.

Crash safety comes from the order of steps: the SQL rows are committed (INSERT ... ON
CONFLICT DO NOTHING) before any Redis record is deleted, the ledger list is trimmed only
if it still starts with the entry that was read, and every claim is only a postponement.
A flusher that dies between any two steps leaves work that the next pass redoes without
loss and without duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.dead_letters import (
    end_retries,
    job_record,
    ledger_record,
    retry_or_set_aside,
    write_records,
)
from service.dispatch import dispatch
from service.errors import InvalidTransition, NotFound
from service.history.engine import make_engine, make_session_factory
from service.retention import delete_inputs, expire_results
from service.runtime import Runtime, make_core, open_runtime
from service.settings import Settings
from service.state.clients import state_redis
from service.state.codes import Code
from service.state.due import DueIndex, new_placeholder
from service.state.fsm import TERMINAL, JobState
from service.state.outbox import Outbox
from service.state.records import JOB_STATE, JOB_TOTAL
from service.state.store import Core
from service.storage import Storage
from service.webhooks import WebhookSender, sender_client

log = logging.getLogger("tollgate.flusher")

# A claimed entry comes back this much later if its flusher died before finishing it.
CLAIM_MS = 30_000
# Ledger entries read per bucket and pass: a job writes at most three (its hold at reserve,
# then a release and a charge when it ends).
LEDGER_ENTRIES_PER_JOB = 3
# Rounds of flush_batch a bucket may take in one pass while it comes back saturated.
MAX_ROUNDS = 25
# The due index's safety net runs this often (and on a flusher's first pass).
FULL_SWEEP_S = 60.0
# Scripts in flight per bucket: redis-py's pool raises (does not wait) when it runs out of
# connections, so the flusher must never start hundreds of calls at once.
SCRIPTS_IN_FLIGHT = 8

T = TypeVar("T")
Reindex = Literal["in_use", "all"]
Requeue = Callable[[str], Awaitable[None]]
# (runtime, owner, job id) -> the API's job view; given by the command line (service.cli)
RuntimeJobView = Callable[[Runtime, str, str], Awaitable[dict[str, Any]]]
Sessions = async_sessionmaker[AsyncSession]


@dataclass(slots=True)
class FlushStats:
    expired_holds: int = 0
    expired_leases: int = 0
    requeued: int = 0
    flushed_jobs: int = 0
    ledger_entries: int = 0
    set_aside: int = 0  # records SQL kept refusing, moved to flush_failures
    results_expired: int = 0  # jobs whose files were deleted after TOLLGATE_RESULT_TTL
    # Some batch came back full: there is more waiting, so the next pass should not sleep.
    saturated: bool = False

    def add(self, other: FlushStats) -> None:
        for field in fields(self):
            if field.name != "saturated":
                setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        self.saturated = self.saturated or other.saturated

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self) if f.name != "saturated")

    def __str__(self) -> str:
        return (f"{self.flushed_jobs} jobs and {self.ledger_entries} ledger entries flushed, "
                f"{self.expired_holds} holds expired, {self.expired_leases} leases expired, "
                f"{self.requeued} queued jobs re-enqueued, {self.set_aside} records set aside, "
                f"{self.results_expired} jobs' results expired")


async def _bounded(call: Callable[[str], Awaitable[T]], job_ids: list[str]) -> list[T]:
    """call(job_id) for every job, at most SCRIPTS_IN_FLIGHT at a time, results in order."""
    results: list[T] = []
    for start in range(0, len(job_ids), SCRIPTS_IN_FLIGHT):
        chunk = job_ids[start : start + SCRIPTS_IN_FLIGHT]
        results += await asyncio.gather(*(call(job_id) for job_id in chunk))
    return results


async def _owners(core: Core, job_ids: list[str]) -> dict[str, str | None]:
    """The owner of each job of one bucket (None: the job is gone), in one round trip."""
    jobs = await core.jobs(job_ids)
    return {job_id: job.user_id if job else None for job_id, job in zip(job_ids, jobs, strict=True)}


async def _expire_holds(core: Core, bucket: int, job_ids: list[str], flush_ms: int) -> int:
    owners = await _owners(core, job_ids)

    async def expire(job_id: str) -> bool:
        owner = owners[job_id]
        if owner is None:  # the job is gone: only its index entry is left
            await core.drop_index_entry(bucket, "holds", job_id)
            return False
        try:
            progress = await core.cancel(job_id, owner, reason="hold_expired",
                                         flush_delay_ms=flush_ms,
                                         from_states=(JobState.CREATED, JobState.UPLOADED))
        except (InvalidTransition, NotFound):
            return False  # the job moved on (executed, canceled) after the claim
        return progress.code is Code.OK

    return sum(await _bounded(expire, job_ids))


async def _expire_leases(core: Core, bucket: int, job_ids: list[str], flush_ms: int) -> int:
    owners = await _owners(core, job_ids)

    async def expire(job_id: str) -> bool:
        owner = owners[job_id]
        if owner is None:
            await core.drop_index_entry(bucket, "leases", job_id)
            return False
        try:
            progress = await core.settle(job_id, owner, JobState.FAILED,
                                         from_states=(JobState.RUNNING,),
                                         reason="lease_expired", flush_delay_ms=flush_ms)
        except (InvalidTransition, NotFound):
            return False  # finished by its last callback after the claim
        return progress.code is Code.OK

    return sum(await _bounded(expire, job_ids))


async def _requeue(job_ids: list[str], requeue: Requeue | None) -> int:
    if requeue is None:
        return 0
    count = 0
    for job_id in job_ids:
        try:
            await requeue(job_id)
            count += 1
        except Exception:  # one broken job must not stop the sweep of the others
            log.exception("re-enqueueing job %s failed", job_id)
    return count


async def _flush_history(
    core: Core, sessions: Sessions, settings: Settings, bucket: int, job_ids: list[str],
    ledger_limit: int, storage: Storage | None,
) -> FlushStats:
    """Finished jobs and ledger entries to SQL, then off Redis. What SQL refuses comes back
    later or is set aside (service.dead_letters), and never holds up the rest."""
    snapshots, raw_entries, retried = await asyncio.gather(
        core.raw_job_snapshots(job_ids), core.ledger_head(bucket, ledger_limit),
        core.ledger_retries_due(bucket, ledger_limit))

    jobs, vanished = [], []
    for job_id, (job, items, meta) in zip(job_ids, snapshots, strict=True):
        if not job:
            vanished.append(job_id)  # deleted by an earlier flush: only the index entry left
        elif job.get(JOB_STATE) in TERMINAL:
            jobs.append(job_record(job, items, meta))
    entries = [ledger_record(raw) for raw in raw_entries]
    retries = [ledger_record(raw) for raw in retried]

    refused = await write_records(sessions, [*jobs, *entries, *retries])
    set_aside = await retry_or_set_aside(core, sessions, settings, bucket, refused)
    waiting = {id(record) for record, _ in refused}
    written = [record for record in jobs if id(record) not in waiting]
    ended = [*written, *(record for record in set_aside if record.kind == "job")]

    # Only now, with the rows committed (or set aside), may the inputs and Redis records go.
    # A vanished job has no owner left; its index entry goes all the same.
    if storage is not None:
        await delete_inputs(storage, [(r.record_id, int(r.source["job"].get(JOB_TOTAL) or 0))
                                      for r in ended])
    owners = {record.record_id: record.owner for record in ended}
    await asyncio.gather(
        _bounded(lambda job_id: core.flush_done(job_id, owners.get(job_id, "")),
                 [*owners, *vanished]),
        core.forget_job_attempts(bucket, [record.record_id for record in written]))
    if raw_entries:  # every entry read is in SQL, waiting in the retry zset, or set aside
        await core.ledger_ack(bucket, len(raw_entries), raw_entries[0])
    await end_retries(core, bucket, [r for r in retries if id(r) not in waiting],
                      set_aside=False)
    await end_retries(core, bucket, set_aside, set_aside=True)
    ledger_written = sum(1 for r in [*entries, *retries] if id(r) not in waiting)
    return FlushStats(flushed_jobs=len(written), ledger_entries=ledger_written,
                      set_aside=len(set_aside),
                      saturated=max(len(raw_entries), len(retried)) >= ledger_limit)


async def flush_bucket(
    core: Core,
    sessions: Sessions,
    settings: Settings,
    bucket: int,
    *,
    requeue: Requeue | None = None,
    claim_ms: int = CLAIM_MS,
    storage: Storage | None = None,
) -> FlushStats:
    limit = settings.flush_batch
    due = await core.claim_due(bucket, limit=limit, claim_ms=claim_ms,
                               requeue_after_ms=settings.requeue_after * 1000)
    flush_ms = settings.flush_delay * 1000
    stats = FlushStats()
    stats.expired_holds = await _expire_holds(core, bucket, due.expired_holds, flush_ms)
    stats.expired_leases = await _expire_leases(core, bucket, due.expired_leases, flush_ms)
    stats.requeued = await _requeue(due.stale_queued, requeue)
    flushed = await _flush_history(core, sessions, settings, bucket, due.due_flushes,
                                   limit * LEDGER_ENTRIES_PER_JOB, storage)
    stats.add(flushed)
    stats.saturated = flushed.saturated or any(
        len(ids) >= limit
        for ids in (due.expired_holds, due.expired_leases, due.stale_queued, due.due_flushes))
    return stats


async def reindex_buckets(core: Core, settings: Settings, which: Reindex) -> int:
    """The due index's safety net (see the module docstring): "in_use" reads the buckets
    in use, "all" every bucket (a flusher's first pass). Returns the buckets with work."""
    due = DueIndex(core)
    buckets = range(settings.buckets) if which == "all" else await due.buckets_in_use()
    return await due.reindex(buckets, settings.requeue_after * 1000)


async def flush_once(
    core: Core,
    session_factory: Sessions,
    settings: Settings,
    *,
    requeue: Requeue | None = None,
    claim_ms: int = CLAIM_MS,
    concurrency: int = 4,
    storage: Storage | None = None,
    reindex: Reindex | None = None,
) -> FlushStats:
    """One pass over the buckets the due index names, `concurrency` buckets at a time;
    with `reindex`, the safety net runs first.

    A bucket that comes back saturated is taken again at once, up to MAX_ROUNDS rounds, so
    one heavy user's backlog drains within the pass. Each visited bucket's next due time is
    read after its visit and settled into the index, after an error too.

    Safe to run in several processes at once. A bucket that fails does not stop the
    others (cancelling one mid-transaction could leave a SQLite write lock behind); the
    first error is raised after the pass, and the failed bucket's work is redone later.
    """
    stats = FlushStats()
    gate = asyncio.Semaphore(concurrency)
    due = DueIndex(core)
    requeue_after_ms = settings.requeue_after * 1000
    if reindex is not None:
        await reindex_buckets(core, settings, reindex)
    placeholder = new_placeholder()
    buckets = await due.take(placeholder, limit=settings.buckets)

    async def one(bucket: int) -> None:
        async with gate:
            try:
                for _ in range(MAX_ROUNDS):
                    done = await flush_bucket(core, session_factory, settings, bucket,
                                              requeue=requeue, claim_ms=claim_ms,
                                              storage=storage)
                    saturated, done.saturated = done.saturated, False
                    stats.add(done)
                    if not saturated:
                        break
                else:  # more waits: the next pass comes without a pause
                    stats.saturated = True
            finally:  # the work left (after an error too) decides the bucket's next visit
                await due.settle(bucket, placeholder,
                                 await due.next_due(bucket, requeue_after_ms))

    outcomes = await asyncio.gather(*(one(bucket) for bucket in buckets),
                                    return_exceptions=True)
    errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if errors:
        raise errors[0]
    if storage is not None:  # `storage` given: the inputs of flushed jobs went already
        stats.results_expired = await expire_results(session_factory, storage,
                                                     settings.result_ttl)
    if stats:
        log.info("flusher pass: %s", stats)
    return stats


def _stop_on_signals(stop: asyncio.Event) -> list[signal.Signals]:
    """SIGTERM/SIGINT end the loop after the current pass; returns the signals taken over."""
    loop = asyncio.get_running_loop()
    taken = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Outside the main thread (e.g. inside `tollgate dev`) the caller stops us instead.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            taken.append(sig)
    return taken


async def run_flusher(
    settings: Settings,
    *,
    once: bool,
    requeue: Requeue | None = None,
    stop: asyncio.Event | None = None,
    webhooks: WebhookSender | None = None,
    storage: Storage | None = None,
) -> FlushStats:
    """The flusher loop with its own Redis client and SQL engine; returns the totals.
    `webhooks` delivers in a loop of its own beside it (one pass after the flush if once)."""
    client = state_redis(settings)
    core = make_core(client, settings)  # its gathered scripts share pipelines
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    stop = stop or asyncio.Event()
    signals = _stop_on_signals(stop)
    totals = FlushStats()
    print(f"flusher: {settings.buckets} buckets, every {settings.flusher_interval}s"
          + (" (one pass)" if once else ""), flush=True)
    delivering = None if webhooks is None or once else asyncio.create_task(
        webhooks.run(stop, settings.flusher_interval), name="tollgate-webhooks")
    loop = asyncio.get_running_loop()
    reindex: Reindex | None = "all"  # first pass: every bucket (work from before a restart)
    last_sweep = loop.time()
    try:
        while not stop.is_set():
            try:
                stats = await flush_once(core, sessions, settings, requeue=requeue,
                                         storage=storage, reindex=reindex)
                if reindex is not None:
                    last_sweep = loop.time()
                reindex = "in_use" if loop.time() - last_sweep >= FULL_SWEEP_S else None
            except Exception:
                if once:
                    raise
                # Redis or SQL away for a moment: every step is redoable, so try again.
                log.exception("flusher pass failed; retrying in %ss", settings.flusher_interval)
                stats = FlushStats()
            totals.add(stats)  # a pass that did something is logged by flush_once
            if once:
                if webhooks is not None:
                    await webhooks.deliver_once()
                break
            if not stats.saturated:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=settings.flusher_interval)
    finally:
        stop.set()
        if delivering is not None:
            await delivering
        for sig in signals:
            asyncio.get_running_loop().remove_signal_handler(sig)
        await engine.dispose()
        await client.aclose()
    print(f"flusher: stopped; total {totals}", flush=True)
    return totals


async def run_flusher_with_requeue(settings: Settings, *, once: bool,
                                   job_view: RuntimeJobView | None = None,
                                   stop: asyncio.Event | None = None) -> None:
    """The sweeper with the API's own re-enqueue: a queued job nobody started needs fresh
    presigned URLs and its callback token, so this opens a Runtime for it. With `job_view`
    (the API's job view, passed in by the command line) it delivers webhooks too."""
    if not settings.jwt_secret:
        raise SystemExit("TOLLGATE_JWT_SECRET is not set (re-enqueued jobs need callback tokens)")
    rt = await open_runtime(settings, settings.jwt_secret)

    async def requeue(job_id: str) -> None:
        await dispatch(rt, job_id)

    webhooks = None
    if job_view is not None:
        view = job_view

        async def render(owner: str, job_id: str) -> dict[str, Any] | None:
            try:
                return await view(rt, owner, job_id)
            except NotFound:
                return None

        webhooks = WebhookSender(Outbox(rt.core), settings, render, sender_client(settings))
    try:
        await run_flusher(settings, once=once, requeue=requeue, webhooks=webhooks,
                          storage=rt.storage, stop=stop)
    finally:
        if webhooks is not None:
            await webhooks.client.aclose()
        await rt.close()
