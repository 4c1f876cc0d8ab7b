"""Dead letters: a record SQL refuses is retried a few times, then set aside; never a stall.

The flusher writes a bucket's finished jobs and ledger entries in one transaction; a job's
record is its jobs_log row together with its `release` and `charge` ledger rows (built from
the job hash, the very rows finish_job pushed), so they land, wait or are set aside as one,
and a Redis loss can never leave a job's money in SQL without its row. When SQL
refuses that batch (a value too long for its column, a NUL in text, a constraint), it is
split in halves, and halves of those, until each refused record is alone in a transaction
of its own: only the refused ones stay behind, the rest of the bucket lands in the same
pass. A refused record comes back after a growing delay, its attempts counted in Redis;
after TOLLGATE_FLUSH_ATTEMPTS it is set aside in the flush_failures table, leaves Redis,
counts in tollgate_flush_failures_total and is logged once. `tollgate inspect failures
--retry` writes it again after a fix.

Only refusals of the record itself are set aside. A lost connection, a deadlock or a bug
raises as before: the pass fails and its work is redone, nothing is set aside for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.contract import clean_error
from service.history.balances import insert_grants
from service.history.deliveries import upsert_deliveries
from service.history.failures import (
    delete_failure,
    get_failure,
    list_failures,
    record_of,
    retry_failed,
    set_aside,
)
from service.history.queries import insert_ledger, upsert_jobs
from service.jobs.deliveries import delivery_row
from service.settings import Settings
from service.state.records import (
    JOB_ID,
    JOB_IN_SQL,
    JOB_OWNER,
    JobRecord,
    LedgerEntry,
    ms_to_datetime,
)
from service.state.store import Core

log = logging.getLogger("tollgate.flusher")


class _AbortedPipeline(logging.Filter):
    """psycopg runs the flusher's executemany in pipeline mode; when SQL refuses a row, it
    logs a warning as it closes the aborted pipeline ("error ignored terminating ...:
    pipeline aborted"). The refusal itself is raised and handled here (split, retried, set
    aside with one line of ours): that warning adds nothing, at random (it depends on how
    far the pipeline got), so it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("error ignored terminating")
                    and message.endswith("pipeline aborted"))


logging.getLogger("psycopg").addFilter(_AbortedPipeline())

Sessions = async_sessionmaker[AsyncSession]

# What a record's own data can raise: SQL's refusals, and Python's while building its row
# (a ledger entry without a field, a number too large for SQLite's INTEGER).
_DATA_ERRORS = (DataError, IntegrityError, ValueError, TypeError, OverflowError, KeyError)


def is_refusal(error: BaseException) -> bool:
    if isinstance(error, _DATA_ERRORS):
        return True
    # A bind parameter its column type refused (not a driver error: those are judged above).
    return isinstance(error, StatementError) and not isinstance(error, DBAPIError)


def error_text(error: BaseException) -> str:
    """The database's own message, without the statement and its (maybe huge) parameters."""
    cause = error.orig if isinstance(error, StatementError) and error.orig is not None else error
    return clean_error(f"{type(cause).__name__}: {cause}")


@dataclass(frozen=True, slots=True)
class Record:
    """One row the flusher writes, as Redis held it: a job's hashes, or a ledger entry's JSON
    (a code fix in the conversion to a row then also fixes a set-aside record's retry)."""

    kind: str  # "job" | "ledger"
    record_id: str
    source: dict[str, Any]  # job: {"job": hash, "items": hash, "meta": JSON}; ledger: {"entry"}
    entry: str = ""  # a ledger entry exactly as read from Redis: its identity in list and zset

    # A ledger entry that settles a job (its release or charge): the job's id, else ''.
    settles: str = ""

    @property
    def owner(self) -> str:
        return str(self.source.get("job", {}).get(JOB_OWNER, ""))

    def rows(self) -> Rows:
        """A ledger entry's row; a job's jobs_log row and its release and charge rows."""
        if self.kind == "ledger":
            entry = json.loads(self.source["entry"])
            row = LedgerEntry.from_dict(entry).history_row()
            return Rows([], [row], grants=grant_rows(entry, row))
        deliveries = delivery_rows(self.source.get("webhooks") or {})
        if self.in_sql:  # its rows went to SQL with its release or charge: only its log now
            return Rows([], [], deliveries)
        job = JobRecord.from_redis(self.source["job"], self.source["items"],
                                   self.source["meta"])
        if job is None:
            raise ValueError("the job hash is empty")
        return Rows([job.history_row()], money_rows(job), deliveries)

    @property
    def in_sql(self) -> bool:
        """A job whose jobs_log, release and charge rows are in SQL already: the flusher
        wrote them on the first pass after it ended and marked its hash (mark_in_sql.lua)."""
        return self.kind == "job" and bool(self.source.get("job", {}).get(JOB_IN_SQL))


@dataclass(frozen=True, slots=True)
class Rows:
    jobs: list[dict[str, Any]]
    ledger: list[dict[str, Any]]
    deliveries: list[dict[str, Any]] = field(default_factory=list)  # webhook_deliveries
    grants: list[dict[str, Any]] = field(default_factory=list)  # credit_grants


def grant_rows(entry: dict[str, Any], row: dict[str, Any]) -> list[dict[str, Any]]:
    """The credit_grants row of a `grant` entry that made a grant (lua/grant.lua,
    lua/ensure_user.lua name it); none for a removal or an entry from before grants."""
    if entry.get("kind") != "grant" or not entry.get("grant_id"):
        return []
    expires = entry.get("expires_at")
    return [{"id": str(entry["grant_id"]), "user_id": row["user_id"],
             "kind": str(entry.get("grant_kind") or "paid"), "amount": int(row["amount"]),
             "expires_at": None if expires is None else ms_to_datetime(int(expires)),
             "ledger_id": row["id"], "created_at": row["at"]}]


def delivery_rows(records: dict[str, str]) -> list[dict[str, Any]]:
    """The rows of a job's delivery log; a record no script could have written is left out
    (it must not hold up the job's own row)."""
    rows = []
    for raw in records.values():
        try:
            rows.append(delivery_row(json.loads(raw)))
        except (ValueError, TypeError, KeyError) as error:
            log.warning("flush: a webhook delivery record is unreadable (%s), left out", error)
    return rows


# The ledger entries finish_job.lua pushes when a job ends (ids '<kind>:<job id>').
SETTLING_KINDS = ("release", "charge")


def money_rows(job: JobRecord) -> list[dict[str, Any]]:
    """The release and charge rows of a finished job, from its hash: the same ids, amounts
    and time as the entries finish_job.lua pushed (whichever reaches SQL first is kept)."""
    at = job.finished_at or job.updated_at
    rows = []
    if job.cost > 0:
        rows.append({"id": f"release:{job.id}", "user_id": job.user_id, "kind": "release",
                     "amount": job.cost, "job_id": job.id, "reason": None, "at": at})
    if job.charged > 0:
        rows.append({"id": f"charge:{job.id}", "user_id": job.user_id, "kind": "charge",
                     "amount": -job.charged, "job_id": job.id, "reason": None, "at": at})
    return rows


def job_record(job: dict[str, str], items: dict[str, str], meta: str | None,
               webhooks: dict[str, str] | None = None) -> Record:
    """`webhooks`: the job's delivery log, written to SQL with its row."""
    return Record("job", job[JOB_ID], {"job": job, "items": items, "meta": meta,
                                       "webhooks": webhooks or {}})


def ledger_record(entry: str) -> Record:
    try:
        parsed = json.loads(entry)
    except ValueError:
        parsed = None
    settles = ""
    if isinstance(parsed, dict) and parsed.get("id"):
        record_id = str(parsed["id"])
        if parsed.get("kind") in SETTLING_KINDS and isinstance(parsed.get("job_id"), str):
            settles = parsed["job_id"]
    else:  # not an entry any script writes: named by its text
        record_id = "unreadable:" + hashlib.sha256(entry.encode()).hexdigest()[:32]
    return Record("ledger", record_id, {"entry": entry}, entry, settles)


async def _write(session: AsyncSession, rows: list[tuple[Record, Rows]]) -> None:
    await upsert_jobs(session, [row for _, built in rows for row in built.jobs], count=False)
    await insert_ledger(session, [row for _, built in rows for row in built.ledger],
                        count=False)
    await upsert_deliveries(session, [row for _, built in rows for row in built.deliveries])
    await insert_grants(session, [row for _, built in rows for row in built.grants])


async def _write_or_split(
    sessions: Sessions, rows: list[tuple[Record, Rows]],
    refused: list[tuple[Record, BaseException]],
) -> None:
    """One transaction for the rows; when SQL refuses it, each half on its own, down to
    the single refused records: k refused records among n cost about 2k·log2(n)
    transactions, not n (one per record took 5 s for a bucket of 200 jobs on PostgreSQL)."""
    try:
        async with sessions() as session, session.begin():
            await _write(session, rows)
        return
    except Exception as error:
        if not is_refusal(error):
            raise
        if len(rows) == 1:
            refused.append((rows[0][0], error))
            return
    middle = len(rows) // 2
    await _write_or_split(sessions, rows[:middle], refused)
    await _write_or_split(sessions, rows[middle:], refused)


async def write_records(
    sessions: Sessions, records: list[Record]
) -> list[tuple[Record, BaseException]]:
    """Writes every record SQL takes; returns the refused ones with their errors.

    One transaction when all goes well; after a refusal, smaller and smaller ones, so each
    refused record ends up alone in its own (and every other record is written).
    """
    refused: list[tuple[Record, BaseException]] = []
    rows: list[tuple[Record, Rows]] = []
    for record in records:
        try:
            rows.append((record, record.rows()))
        except _DATA_ERRORS as error:
            refused.append((record, error))
    if rows:
        await _write_or_split(sessions, rows, refused)
    return refused


async def retry_or_set_aside(
    core: Core,
    sessions: Sessions,
    settings: Settings,
    bucket: int,
    refused: list[tuple[Record, BaseException]],
) -> list[Record]:
    """Counts each refusal; returns the records whose last attempt it was, now set aside in
    SQL (the caller then takes a job's records out of Redis)."""
    gone: list[Record] = []
    for record, error in refused:
        attempt = await core.flush_retry_later(
            bucket, record.kind, record.record_id, record.entry,
            attempts_allowed=settings.flush_attempts,
            delay_ms=int(settings.flush_retry_delay * 1000))
        text = error_text(error)
        if not attempt.exhausted:
            log.debug("flush: SQL refused %s %r (attempt %d), retrying later: %s",
                      record.kind, record.record_id, attempt.attempts, text)
            continue
        await _set_aside(sessions, record, text, attempt.attempts,
                         ms_to_datetime(attempt.first_failed_ms))
        # The one line per record (no traceback): SQL refused it every time.
        log.warning("flush: set aside %s %r after %d attempts (tollgate inspect failures): %s",
                    record.kind, record.record_id[:200], attempt.attempts, text)
        gone.append(record)
    return gone


async def _set_aside(sessions: Sessions, record: Record, error: str, attempts: int,
                     first_failed_at: datetime) -> None:
    """Into flush_failures. A job's release and charge rows go to the ledger in the same
    transaction when SQL takes them: the balance in SQL stays right (a later rebuild must
    not refund a job that was charged) while its jobs_log row waits for an operator's
    retry, and `tollgate audit` names the job until then."""
    money = _money_rows_of(record)
    if money:
        try:
            async with sessions() as session, session.begin():
                await insert_ledger(session, money)
                await set_aside(session, kind=record.kind, record_id=record.record_id,
                                record=record.source, error=error, attempts=attempts,
                                first_failed_at=first_failed_at)
            return
        except Exception as refusal:
            if not is_refusal(refusal):
                raise
    async with sessions() as session, session.begin():
        await set_aside(session, kind=record.kind, record_id=record.record_id,
                        record=record.source, error=error, attempts=attempts,
                        first_failed_at=first_failed_at)


def _money_rows_of(record: Record) -> list[dict[str, Any]]:
    if record.kind != "job":
        return []
    try:
        job = JobRecord.from_redis(record.source["job"])
    except _DATA_ERRORS:
        return []
    return money_rows(job) if job is not None else []


async def end_retries(core: Core, bucket: int, records: list[Record], *, set_aside: bool
                      ) -> None:
    """Forgets the attempts of records done with: written after a retry, or set aside (then
    counted in tollgate_flush_failures_total)."""
    for record in records:
        await core.flush_retry_end(bucket, record.kind, record.record_id, record.entry,
                                   set_aside=set_aside)


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    failure_id: int
    kind: str
    record_id: str
    written: bool
    error: str = ""


async def retry_failures(sessions: Sessions, failure_id: int | None = None
                         ) -> list[RetryOutcome]:
    """Writes set-aside records again (all, or one): a written one leaves flush_failures in
    the same transaction; a refused one stays, with its attempts and newest error."""
    async with sessions() as session:
        if failure_id is None:
            failures = await list_failures(session)
        else:
            one = await get_failure(session, failure_id)
            failures = [one] if one is not None else []
    outcomes = []
    for failure in failures:
        record_id, source = record_of(failure)
        record = Record(failure.kind, record_id, source)
        try:
            async with sessions() as session, session.begin():
                await _write(session, [(record, record.rows())])
                await delete_failure(session, failure.id)
        except Exception as error:
            if not is_refusal(error):
                raise
            async with sessions() as session, session.begin():
                await retry_failed(session, failure.id, error_text(error))
            outcomes.append(RetryOutcome(failure.id, failure.kind, record_id, False,
                                         error_text(error)))
            continue
        outcomes.append(RetryOutcome(failure.id, failure.kind, record_id, True))
    return outcomes
