"""One bucket's work in a pass: what the flusher (service.flusher.loop) does in each bucket
it visits.

Cancel jobs whose upload hold expired (refunding them), fail running jobs whose lease ran
out (a killed worker), hand queued jobs nobody started back to the queue, and move finished
jobs and credit-ledger entries into SQL.

A finished job's jobs_log row, its `release` and its `charge` are written in one
transaction, built from the job hash (service.flusher.dead_letters.Record.rows): the copies
of those two entries in the bucket's ledger list are trimmed unwritten while the job is still in
Redis, so a Redis loss can lose a finished job whole (the rebuild then releases its hold and
writes a `lost_with_redis` row, service.history.balances) but never split it. Holds, grants
and signups are written on every pass.

Crash safety comes from the order of steps: the SQL rows are committed (INSERT ... ON
CONFLICT DO NOTHING) before any Redis record is deleted, the ledger list is trimmed only
if it still starts with the entry that was read, and every claim is only a postponement.
A flusher that dies between any two steps leaves work that the next pass redoes without
loss and without duplicates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.errors import InvalidTransition, NotFound
from service.flusher.dead_letters import (
    Record,
    end_retries,
    job_record,
    ledger_record,
    retry_or_set_aside,
    write_records,
)
from service.flusher.retention import delete_finished_files
from service.settings import Settings
from service.state.codes import Code
from service.state.fsm import TERMINAL, JobState
from service.state.records import JOB_STATE, JOB_TOTAL
from service.state.sched import SchedReads
from service.state.store import Core
from service.storage import Storage

log = logging.getLogger("tollgate.flusher")

# A claimed entry comes back this much later if its flusher died before finishing it.
CLAIM_MS = 30_000
# Ledger entries read per bucket and pass: a job writes at most three (its hold at reserve,
# then a release and a charge when it ends).
LEDGER_ENTRIES_PER_JOB = 3
# Scripts in flight per bucket: redis-py's pool raises (does not wait) when it runs out of
# connections, so the flusher must never start hundreds of calls at once.
SCRIPTS_IN_FLIGHT = 8

T = TypeVar("T")
Requeue = Callable[[str], Awaitable[None]]
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
        # A start deadline (POST /jobs start_deadline_s) shortened the hold: say which ended it.
        (deadline,) = await SchedReads(core).job_fields(job_id, ("start_deadline",))
        reason = "deadline" if deadline and int(deadline) <= core._now() else "hold_expired"
        try:
            progress = await core.cancel(job_id, owner, reason=reason,
                                         flush_delay_ms=flush_ms,
                                         from_states=(JobState.CREATED, JobState.UPLOADED))
        except (InvalidTransition, NotFound):
            return False  # the job moved on (executed, canceled) after the claim
        return progress.code is Code.OK

    return sum(await _bounded(expire, job_ids))


async def _expire_leases(core: Core, bucket: int, job_ids: list[str], flush_ms: int,
                         lease_ms: int) -> int:
    owners = await _owners(core, job_ids)

    async def expire(job_id: str) -> bool:
        owner = owners[job_id]
        if owner is None:
            await core.drop_index_entry(bucket, "leases", job_id)
            return False
        if await SchedReads(core).waiting_place(job_id) is not None:
            # Its next batches wait in the dispatch order, not on a worker: no lease lost.
            await core.renew_lease(job_id, owner, lease_ms)
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
        except Exception:  # one broken job must not stop the pass over the others
            log.exception("re-enqueueing job %s failed", job_id)
    return count


async def _held_by_jobs(core: Core, entries: list[Record], flushing: set[str]) -> set[str]:
    """The jobs named by settling entries (release, charge) whose record writes those rows:
    jobs of this batch, and jobs still in Redis, flushed later."""
    named = {record.settles for record in entries if record.settles}
    if not named:
        return set()
    return (named & flushing) | await core.jobs_present(sorted(named - flushing))


async def _early_records(core: Core, job_ids: list[str]) -> list[Record]:
    """The records of finished jobs still in Redis whose release or charge just came up."""
    if not job_ids:
        return []
    snapshots = await core.raw_job_snapshots(job_ids)
    return [job_record(job, items, meta) for job, items, meta in snapshots
            if job and job.get(JOB_STATE) in TERMINAL]


def _money_count(record: Record) -> int:
    """How many ledger rows (release, charge) a written job's record wrote with it."""
    job = record.source["job"]
    return (int(job.get("cost") or 0) > 0) + (int(job.get("charged") or 0) > 0)


async def _flush_history(
    core: Core, sessions: Sessions, settings: Settings, bucket: int, job_ids: list[str],
    ledger_limit: int, storage: Storage | None,
) -> FlushStats:
    """Finished jobs and ledger entries to SQL, then off Redis. What SQL refuses comes back
    later or is set aside (service.flusher.dead_letters), and never holds up the rest."""
    snapshots, raw_entries, retried, hooks = await asyncio.gather(
        core.raw_job_snapshots(job_ids), core.ledger_head(bucket, ledger_limit),
        core.ledger_retries_due(bucket, ledger_limit), core.webhook_logs(job_ids))

    jobs, vanished = [], []
    for job_id, (job, items, meta), log in zip(job_ids, snapshots, hooks, strict=True):
        if not job:
            vanished.append(job_id)  # deleted by an earlier flush: only the index entry left
        elif job.get(JOB_STATE) in TERMINAL:  # its delivery log goes to SQL with its row
            jobs.append(job_record(job, items, meta, log))
    read = [ledger_record(raw) for raw in raw_entries]
    retried_read = [ledger_record(raw) for raw in retried]
    # A job's release and charge travel with its jobs_log row (its record builds them from
    # the job hash): an entry for a job Redis still holds is left to that job's record, so
    # SQL never has a job's money without its row. The entry is trimmed all the same; a job
    # already gone from Redis (flushed) has its row, and its entry is written as any other.
    held = await _held_by_jobs(core, [*read, *retried_read],
                               {record.record_id for record in jobs})
    entries = [record for record in read if record.settles not in held]
    retries = [record for record in retried_read if record.settles not in held]
    # ... and that record is written now, on the first pass after the job ended, not only at
    # its flush: a Redis loss in between would otherwise take a charge the client was told
    # of. The Redis record stays until the flush (reads prefer it), which writes the same
    # rows again as no-ops. Refused here, the rows wait for the flush and its dead letters.
    early = await _early_records(core, sorted(held - {record.record_id for record in jobs}))

    refused = await write_records(sessions, [*jobs, *early, *entries, *retries])
    refused_ids = {id(record) for record, _ in refused}
    early_written = [record for record in early if id(record) not in refused_ids]
    early_ids = {id(record) for record in early}
    refused = [(record, error) for record, error in refused if id(record) not in early_ids]
    set_aside = await retry_or_set_aside(core, sessions, settings, bucket, refused)
    waiting = {id(record) for record, _ in refused}
    written = [record for record in jobs if id(record) not in waiting]
    ended = [*written, *(record for record in set_aside if record.kind == "job")]

    # Only now, with the rows committed (or set aside), may the inputs and Redis records go.
    # A vanished job has no owner left; its index entry goes all the same.
    if storage is not None:
        await delete_finished_files(storage, [
            (r.record_id, int(r.source["job"].get(JOB_TOTAL) or 0), r.source.get("items") or {})
            for r in ended], keep_failed_inputs=settings.retry_window > 0)
    owners = {record.record_id: record.owner for record in ended}
    await asyncio.gather(
        _bounded(lambda job_id: core.flush_done(job_id, owners.get(job_id, "")),
                 [*owners, *vanished]),
        core.forget_job_attempts(bucket, [record.record_id for record in written]))
    if raw_entries:  # every entry read is in SQL, waiting in the retry zset, or set aside
        await core.ledger_ack(bucket, len(raw_entries), raw_entries[0])
    await end_retries(core, bucket, [*(r for r in retries if id(r) not in waiting),
                                     *(r for r in retried_read if r.settles in held)],
                      set_aside=False)
    await end_retries(core, bucket, set_aside, set_aside=True)
    ledger_written = sum(1 for r in [*entries, *retries] if id(r) not in waiting) + sum(
        _money_count(record) for record in [*written, *early_written])
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
    stats.expired_leases = await _expire_leases(core, bucket, due.expired_leases, flush_ms,
                                                settings.lease_ttl * 1000)
    stats.requeued = await _requeue(due.stale_queued, requeue)
    flushed = await _flush_history(core, sessions, settings, bucket, due.due_flushes,
                                   limit * LEDGER_ENTRIES_PER_JOB, storage)
    stats.add(flushed)
    stats.saturated = flushed.saturated or any(
        len(ids) >= limit
        for ids in (due.expired_holds, due.expired_leases, due.stale_queued, due.due_flushes))
    return stats
