"""One bucket's work in a pass: what the flusher (service.flusher.loop) does in each bucket
it visits.

Cancel jobs whose upload hold expired (refunding them), fail running jobs whose lease ran
out (a killed worker), hand queued jobs nobody started back to the queue, expire what is
left in credit grants past their expires_at, and move finished jobs and credit-ledger
entries into SQL.

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
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
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
# Buckets read (or finished) at once in a pass: with SCRIPTS_IN_FLIGHT each, at most 128
# calls in flight (the Gate of service.state.clients bounds them below the pool besides).
BUCKETS_IN_FLIGHT = 16

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
    expired_credits: int = 0  # credits left in grants past their expires_at
    # Some batch came back full: there is more waiting, so the next pass should not sleep.
    saturated: bool = False

    def add(self, other: FlushStats) -> None:
        for one in fields(self):
            if one.name != "saturated":
                setattr(self, one.name, getattr(self, one.name) + getattr(other, one.name))
        self.saturated = self.saturated or other.saturated

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self) if f.name != "saturated")

    def __str__(self) -> str:
        return (f"{self.flushed_jobs} jobs and {self.ledger_entries} ledger entries flushed, "
                f"{self.expired_holds} holds expired, {self.expired_leases} leases expired, "
                f"{self.requeued} queued jobs re-enqueued, {self.set_aside} records set aside, "
                f"{self.results_expired} jobs' results expired, "
                f"{self.expired_credits} credits of grants expired")


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


def _named_jobs(entries: list[Record]) -> set[str]:
    """The jobs whose release or charge these ledger entries are."""
    return {record.settles for record in entries if record.settles}


async def _held_and_early(core: Core, entries: list[Record], flushing: set[str]
                          ) -> tuple[set[str], list[Record]]:
    """(held, early) for the settling entries (release, charge) read: `held` names the jobs
    whose record writes those rows (jobs of this batch, and jobs still in Redis, flushed
    later); `early` is the records of the finished ones still in Redis whose rows are not
    in SQL yet (not marked JOB_IN_SQL), written now. One round trip."""
    named = _named_jobs(entries)
    others = sorted(job_id for job_id in named - flushing if core.keys.job(job_id) is not None)
    snapshots = await core.raw_job_snapshots(others) if others else []
    present = {job_id for job_id, (job, _, _) in zip(others, snapshots, strict=True) if job}
    early = [record for job, items, meta in snapshots
             if job and job.get(JOB_STATE) in TERMINAL
             and not (record := job_record(job, items, meta)).in_sql]
    return (named & flushing) | present, early


def _money_count(record: Record) -> int:
    """How many ledger rows (release, charge) a written job's record wrote with it."""
    if record.in_sql:  # written before, with its release or charge
        return 0
    job = record.source["job"]
    return (int(job.get("cost") or 0) > 0) + (int(job.get("charged") or 0) > 0)


@dataclass(slots=True)
class Visit:
    """One bucket's visit in a pass, between its reads and its SQL write: what it claimed
    and read, and what is to be written (`records`). The pass writes the records of many
    visits in one transaction (flush_buckets), then finishes each visit (finish_visit)."""

    bucket: int
    stats: FlushStats  # the timed work done (holds, leases, requeues); saturation so far
    jobs: list[Record] = field(default_factory=list)  # finished jobs due for their flush
    vanished: list[str] = field(default_factory=list)  # flushed already: index entries left
    raw_entries: list[str] = field(default_factory=list)  # the ledger head as read
    retried_read: list[Record] = field(default_factory=list)  # refused entries due again
    entries: list[Record] = field(default_factory=list)  # ledger rows to write
    retries: list[Record] = field(default_factory=list)
    held: set[str] = field(default_factory=set)  # jobs whose record writes their money rows
    early: list[Record] = field(default_factory=list)  # see _held_and_early

    @property
    def records(self) -> list[Record]:
        return [*self.jobs, *self.early, *self.entries, *self.retries]


async def visit_bucket(
    core: Core, settings: Settings, bucket: int, *, requeue: Requeue | None = None,
    claim_ms: int = CLAIM_MS,
) -> Visit:
    """A bucket's timed work (expire holds and leases, requeue), then the reads of its
    history: the finished jobs due and the ledger head, as records to write."""
    limit = settings.flush_batch
    due = await core.claim_due(bucket, limit=limit, claim_ms=claim_ms,
                               requeue_after_ms=settings.requeue_after * 1000)
    flush_ms = settings.flush_delay * 1000
    stats = FlushStats()
    stats.expired_holds = await _expire_holds(core, bucket, due.expired_holds, flush_ms)
    stats.expired_leases = await _expire_leases(core, bucket, due.expired_leases, flush_ms,
                                                settings.lease_ttl * 1000)
    stats.requeued = await _requeue(due.stale_queued, requeue)
    # Grants past their expires_at: their expire entries are read below, in this visit.
    stats.expired_credits = await core.expire_grants(bucket, limit=limit)
    stats.saturated = any(
        len(ids) >= limit
        for ids in (due.expired_holds, due.expired_leases, due.stale_queued, due.due_flushes))

    job_ids, ledger_limit = due.due_flushes, limit * LEDGER_ENTRIES_PER_JOB
    read = await core.flush_read(bucket, job_ids, ledger_limit)
    snapshots, raw_entries, retried, hooks = (read.snapshots, read.ledger_head,
                                              read.retries_due, read.webhook_logs)
    visit = Visit(bucket, stats, raw_entries=raw_entries)
    for job_id, (job, items, meta), log in zip(job_ids, snapshots, hooks, strict=True):
        if not job:
            visit.vanished.append(job_id)  # deleted by an earlier flush: only its index entry
        elif job.get(JOB_STATE) in TERMINAL:  # its delivery log goes to SQL with its row
            visit.jobs.append(job_record(job, items, meta, log))
    entries = [ledger_record(raw) for raw in raw_entries]
    visit.retried_read = [ledger_record(raw) for raw in retried]
    # A job's release and charge travel with its jobs_log row (its record builds them from
    # the job hash): an entry for a job Redis still holds is left to that job's record, so
    # SQL never has a job's money without its row. The entry is trimmed all the same; a job
    # already gone from Redis (flushed) has its row, and its entry is written as any other.
    # ... and that record is written now, on the first pass after the job ended, not only at
    # its flush: a Redis loss in between would otherwise take a charge the client was told
    # of. The Redis record stays until the flush (reads prefer it); once the rows are in,
    # its hash is marked (mark_in_sql.lua) and the flush writes only its delivery log.
    # Refused here, the rows wait for the flush and its dead letters.
    visit.held, visit.early = await _held_and_early(
        core, [*entries, *visit.retried_read], {record.record_id for record in visit.jobs})
    visit.entries = [record for record in entries if record.settles not in visit.held]
    visit.retries = [record for record in visit.retried_read
                     if record.settles not in visit.held]
    visit.stats.saturated |= max(len(raw_entries), len(retried)) >= ledger_limit
    return visit


async def finish_visit(
    core: Core, sessions: Sessions, settings: Settings, visit: Visit,
    refused: list[tuple[Record, BaseException]], storage: Storage | None = None,
) -> FlushStats:
    """After the visit's records were written (`refused`: those SQL refused): count the
    refusals (or set them aside), then take what reached SQL out of Redis. What SQL refuses
    comes back later or is set aside (service.flusher.dead_letters), and never holds up the
    rest."""
    bucket = visit.bucket
    refused_ids = {id(record) for record, _ in refused}
    early_written = [record for record in visit.early if id(record) not in refused_ids]
    early_ids = {id(record) for record in visit.early}
    refused = [(record, error) for record, error in refused if id(record) not in early_ids]
    set_aside = await retry_or_set_aside(core, sessions, settings, bucket, refused)
    waiting = {id(record) for record, _ in refused}
    written = [record for record in visit.jobs if id(record) not in waiting]
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
                 [*owners, *visit.vanished]),
        core.forget_job_attempts(bucket, [record.record_id for record in written]),
        core.mark_in_sql([record.record_id for record in early_written]))
    if visit.raw_entries:  # every entry read is in SQL, waiting in the retry zset, or set aside
        await core.ledger_ack(bucket, len(visit.raw_entries), visit.raw_entries[0])
    await end_retries(core, bucket, [*(r for r in visit.retries if id(r) not in waiting),
                                     *(r for r in visit.retried_read if r.settles in visit.held)],
                      set_aside=False)
    await end_retries(core, bucket, set_aside, set_aside=True)
    ledger_written = sum(1 for r in [*visit.entries, *visit.retries] if id(r) not in waiting) + (
        sum(_money_count(record) for record in [*written, *early_written]))
    return FlushStats(flushed_jobs=len(written), ledger_entries=ledger_written,
                      set_aside=len(set_aside))


async def _each(calls: Sequence[Callable[[], Awaitable[T]]], limit: int
                ) -> list[T | BaseException]:
    """Every call, at most `limit` at a time; each one's result or exception, in order."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(call) for call in calls), return_exceptions=True))


async def flush_buckets(
    core: Core,
    sessions: Sessions,
    settings: Settings,
    buckets: Sequence[int],
    *,
    requeue: Requeue | None = None,
    claim_ms: int = CLAIM_MS,
    storage: Storage | None = None,
) -> list[FlushStats | BaseException]:
    """One visit of each bucket, their rows in one SQL transaction: each bucket's stats, or
    the error that stopped it (its work is redone later: every claim is a postponement).

    The buckets are visited BUCKETS_IN_FLIGHT at a time; then the records of every visit
    are written together (INSERT ... ON CONFLICT DO NOTHING, split only around records SQL
    refuses); only after that commit does any visit take records out of Redis. A SQL error
    that is no refusal fails every visit of the group, before any Redis record is deleted.
    """
    visits = await _each([
        functools.partial(visit_bucket, core, settings, bucket, requeue=requeue,
                          claim_ms=claim_ms) for bucket in buckets], BUCKETS_IN_FLIGHT)
    read = [visit for visit in visits if isinstance(visit, Visit)]
    try:
        refused = await write_records(sessions, [r for visit in read for r in visit.records])
    except Exception as failure:  # each bucket's outcome: the pass raises it
        return [visit if isinstance(visit, BaseException) else failure for visit in visits]
    owner = {id(record): visit.bucket for visit in read for record in visit.records}
    by_bucket: dict[int, list[tuple[Record, BaseException]]] = {}
    for record, error in refused:
        by_bucket.setdefault(owner[id(record)], []).append((record, error))
    finished = iter(await _each([
        functools.partial(finish_visit, core, sessions, settings, visit,
                          by_bucket.get(visit.bucket, []), storage) for visit in read],
        BUCKETS_IN_FLIGHT))
    outcomes: list[FlushStats | BaseException] = []
    for visit in visits:
        if isinstance(visit, BaseException):
            outcomes.append(visit)
            continue
        done = next(finished)
        if isinstance(done, BaseException):
            outcomes.append(done)
            continue
        done.add(visit.stats)
        outcomes.append(done)
    return outcomes
