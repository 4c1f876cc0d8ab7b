"""What the SQL side knows of a user's money: ledger totals, open holds, history charges.

The ledger is two-phase: a grant (signup included) adds, a job's `hold` takes its cost at
reserve, its `release` gives the whole cost back when it ends and its `charge` takes what was
used. So, once flushed, SUM(amount) is the balance available, -SUM(charges) is what was spent,
SUM(grants) is what was granted, and a hold without a release is a job still in Redis (live,
or finished and not flushed yet: its release and charge are written with its jobs_log row) or
lost with Redis. Every job the ledger names has a jobs_log row once it left Redis: flushed,
or written by write_lost_jobs when the user is rebuilt after a loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from service.history.failures import record_hash
from service.history.models import (
    AdminOp,
    CreditGrant,
    FlushFailure,
    JobLog,
    LedgerEntry,
    User,
    utcnow,
)
from service.history.queries import _insert, insert_ledger, upsert_jobs

# Ids per IN (...) list: far below both SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    total: int = 0  # SUM(amount): the balance available
    charges: int = 0  # SUM(amount) of charges, <= 0: minus what was spent
    grants: int = 0  # SUM(amount) of grants, signup included: what was granted
    entries: int = 0
    expired: int = 0  # SUM(amount) of expire rows, <= 0: minus what expired of grants


def signup_row(user_id: str, credits: int, at: datetime | None = None) -> dict[str, Any]:
    return {"id": f"signup:{user_id}", "user_id": user_id, "kind": "grant", "amount": credits,
            "job_id": None, "reason": "signup", "at": at or utcnow()}


def grant_row(user_id: str, op: str, amount: int, reason: str) -> dict[str, Any]:
    """The same row as grant.lua's entry for this op (`op`: the digest of its key)."""
    return {"id": f"grant:{user_id}:{op}", "user_id": user_id, "kind": "grant",
            "amount": amount, "job_id": None, "reason": reason, "at": utcnow()}


def credit_grant_row(grant_id: str, user_id: str, kind: str, amount: int,
                     expires_at: datetime | None, ledger_id: str) -> dict[str, Any]:
    return {"id": grant_id, "user_id": user_id, "kind": kind, "amount": amount,
            "expires_at": expires_at, "ledger_id": ledger_id, "created_at": utcnow()}


async def insert_grant(session: AsyncSession, row: dict[str, Any]) -> None:
    """The grant's credit_grants row (an id SQL holds already: nothing)."""
    await insert_grants(session, [row])


async def insert_grants(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """credit_grants rows (ids SQL holds already: left as they are)."""
    if rows:
        statement = _insert(session, cast(Table, CreditGrant.__table__)
                            ).on_conflict_do_nothing(index_elements=["id"])
        await session.execute(statement, rows)


async def user_grants(session: AsyncSession, user_id: str
                      ) -> list[tuple[CreditGrant, int]]:
    """The user's grants, each with what its `expire:<id>...` ledger rows took (>= 0)."""
    grants = list(await session.scalars(
        select(CreditGrant).where(CreditGrant.user_id == user_id).order_by(
            CreditGrant.created_at, CreditGrant.id)))
    expired: dict[str, int] = {}
    rows = await session.execute(select(LedgerEntry.id, LedgerEntry.amount).where(
        LedgerEntry.user_id == user_id, LedgerEntry.kind == "expire"))
    for ledger_id, amount in rows:
        grant_id = str(ledger_id).split(":")[1]
        expired[grant_id] = expired.get(grant_id, 0) - int(amount)
    return [(grant, expired.get(grant.id, 0)) for grant in grants]


def expire_row(user_id: str, grant_id: str, amount: int, suffix: str) -> dict[str, Any]:
    """An expiry SQL writes itself (a rebuild: a grant past its expiry)."""
    return {"id": f"expire:{grant_id}:{suffix}", "user_id": user_id, "kind": "expire",
            "amount": -amount, "job_id": None, "reason": "grant expired", "at": utcnow()}


def release_row(user_id: str, job_id: str, cost: int, reason: str) -> dict[str, Any]:
    """The same id as finish_job's own release: whichever reaches SQL first is the one."""
    return {"id": f"release:{job_id}", "user_id": user_id, "kind": "release", "amount": cost,
            "job_id": job_id, "reason": reason, "at": utcnow()}


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


async def ledger_totals(
    session: AsyncSession, user_ids: Sequence[str] | None = None
) -> dict[str, LedgerTotals]:
    """Per user, for these users or every user with an entry."""
    query = select(
        LedgerEntry.user_id,
        func.coalesce(func.sum(LedgerEntry.amount), 0),
        func.coalesce(func.sum(case((LedgerEntry.kind == "charge", LedgerEntry.amount),
                                    else_=0)), 0),
        func.coalesce(func.sum(case((LedgerEntry.kind == "grant", LedgerEntry.amount),
                                    else_=0)), 0),
        func.count(),
        func.coalesce(func.sum(case((LedgerEntry.kind == "expire", LedgerEntry.amount),
                                    else_=0)), 0),
    ).group_by(LedgerEntry.user_id)
    totals: dict[str, LedgerTotals] = {}
    for chunk in ([None] if user_ids is None else _chunks(list(user_ids))):
        chunked = query if chunk is None else query.where(LedgerEntry.user_id.in_(chunk))
        for user_id, total, charges, grants, entries, expired in (
                await session.execute(chunked)).all():
            totals[user_id] = LedgerTotals(int(total), int(charges), int(grants), int(entries),
                                           int(expired))
    return totals


async def ledger_ids_present(session: AsyncSession, ids: Sequence[str]) -> set[str]:
    """Which of these ledger ids SQL holds already."""
    present: set[str] = set()
    for chunk in _chunks(list(ids)):
        present.update(await session.scalars(
            select(LedgerEntry.id).where(LedgerEntry.id.in_(chunk))))
    return present


async def open_holds(session: AsyncSession, user_id: str) -> list[tuple[str, int]]:
    """(job id, cost) of the user's holds that no release answered yet."""
    release = aliased(LedgerEntry)
    query = (
        select(LedgerEntry.job_id, LedgerEntry.amount)
        .outerjoin(release, release.id == "release:" + LedgerEntry.job_id)
        .where(LedgerEntry.user_id == user_id, LedgerEntry.kind == "hold", release.id.is_(None))
        .order_by(LedgerEntry.id)
    )
    return [(str(job_id), -int(amount)) for job_id, amount in (await session.execute(query))]


async def refund_open_holds(session: AsyncSession, user_id: str, reason: str) -> int:
    """Releases every open hold of the user (jobs Redis lost); returns how many."""
    holds = await open_holds(session, user_id)
    await insert_ledger(session, [release_row(user_id, job_id, cost, reason)
                                  for job_id, cost in holds])
    return len(holds)


async def jobs_without_row(
    session: AsyncSession, user_ids: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """Per user, the jobs its ledger names (hold, release, charge) that jobs_log lacks: live
    or not yet flushed while Redis holds them, lost with Redis otherwise."""
    query = (
        select(LedgerEntry.user_id, LedgerEntry.job_id)
        .outerjoin(JobLog, JobLog.id == LedgerEntry.job_id)
        .where(LedgerEntry.job_id.is_not(None), JobLog.id.is_(None))
        .group_by(LedgerEntry.user_id, LedgerEntry.job_id)
        .order_by(LedgerEntry.user_id, LedgerEntry.job_id)
    )
    named: dict[str, list[str]] = {}
    for chunk in ([None] if user_ids is None else _chunks(list(user_ids))):
        chunked = query if chunk is None else query.where(LedgerEntry.user_id.in_(chunk))
        for user_id, job_id in (await session.execute(chunked)).all():
            named.setdefault(str(user_id), []).append(str(job_id))
    return named


async def users_with_jobs_without_row(
    session: AsyncSession, *, after: str = "", limit: int = 1000
) -> list[str]:
    """Users whose ledger names a job jobs_log lacks (a live job, or one Redis lost), in id
    order after `after`, at most `limit`: the users a Redis loss may have taken with work."""
    query = (
        select(LedgerEntry.user_id)
        .outerjoin(JobLog, JobLog.id == LedgerEntry.job_id)
        .where(LedgerEntry.job_id.is_not(None), JobLog.id.is_(None),
               LedgerEntry.user_id > after)
        .group_by(LedgerEntry.user_id)
        .order_by(LedgerEntry.user_id)
        .limit(limit)
    )
    return [str(user_id) for user_id in await session.scalars(query)]


async def write_lost_jobs(session: AsyncSession, user_id: str, reason: str) -> int:
    """A jobs_log row for each job the user's ledger names that jobs_log lacks, once Redis
    lost the user (and so its jobs): `canceled`, `reason`, with what the ledger says it
    cost and charged (a charge is only ever written with its job's row, so charged is 0
    but for a job split before that was so). Its items and model are unknown: none.
    A job set aside in flush_failures is not lost: it waits for its retry. Run after
    refund_open_holds, in the same transaction. Returns how many."""
    named = (await jobs_without_row(session, [user_id])).get(user_id, [])
    # A job whose row SQL refused waits in flush_failures for an operator's retry: not lost.
    hashes = {record_hash("job", job_id): job_id for job_id in named}
    set_aside: set[str] = set()
    for chunk in _chunks(list(hashes)):
        set_aside.update(await session.scalars(select(FlushFailure.record_hash).where(
            FlushFailure.record_hash.in_(chunk))))
    lost = [job_id for digest, job_id in hashes.items() if digest not in set_aside]
    entries: list[Any] = []
    for chunk in _chunks(lost):
        entries += (await session.execute(
            select(LedgerEntry.job_id, LedgerEntry.kind, LedgerEntry.amount, LedgerEntry.at)
            .where(LedgerEntry.user_id == user_id, LedgerEntry.job_id.in_(chunk)))).all()
    found: dict[str, dict[str, Any]] = {}
    for job_id, kind, amount, at in entries:
        job = found.setdefault(str(job_id), {"hold": 0, "release": 0, "charge": 0, "at": at})
        if kind in ("hold", "release", "charge"):
            job[kind] += int(amount)
        job["at"] = min(job["at"], at)
    now = utcnow()
    rows = []
    for job_id, job in found.items():
        cost = max(-job["hold"], job["release"], 0)
        charged = max(-job["charge"], 0)
        rows.append({
            "id": job_id, "user_id": user_id, "state": "canceled", "total_items": 0,
            "done_items": 0, "failed_items": 0, "price": 0, "cost": cost, "charged": charged,
            "refunded": max(cost - charged, 0), "rule_id": None, "model": None,
            "params": None, "items": [], "reason": reason, "created_at": job["at"],
            "updated_at": now, "started_at": None, "finished_at": now,
        })
    return await upsert_jobs(session, rows) if rows else 0


async def history_charged(
    session: AsyncSession, user_ids: Sequence[str] | None = None
) -> dict[str, tuple[int, int]]:
    """Per user: (jobs in history, SUM(charged) of those jobs)."""
    query = select(JobLog.user_id, func.count(), func.coalesce(func.sum(JobLog.charged), 0)
                   ).group_by(JobLog.user_id)
    charged: dict[str, tuple[int, int]] = {}
    for chunk in ([None] if user_ids is None else _chunks(list(user_ids))):
        chunked = query if chunk is None else query.where(JobLog.user_id.in_(chunk))
        for user_id, jobs, total in (await session.execute(chunked)).all():
            charged[user_id] = (int(jobs), int(total))
    return charged


async def jobs_in_history(session: AsyncSession, job_ids: Sequence[str]) -> set[str]:
    present: set[str] = set()
    for chunk in _chunks(list(job_ids)):
        present.update(await session.scalars(select(JobLog.id).where(JobLog.id.in_(chunk))))
    return present


async def user_plan(session: AsyncSession, user_id: str) -> str | None:
    plan: str | None = await session.scalar(select(User.plan).where(User.id == user_id))
    return plan


async def user_ids(session: AsyncSession) -> list[str]:
    return list(await session.scalars(select(User.id).order_by(User.id)))


async def record_admin_op(
    session: AsyncSession, op_id: str, user_id: str, kind: str, value: str
) -> bool:
    """True when this op is new (the caller applies it in the same transaction)."""
    statement = _insert(session, cast(Table, AdminOp.__table__)).values(
        id=op_id, user_id=user_id, kind=kind, value=value, at=utcnow()
    ).on_conflict_do_nothing(index_elements=["id"]).returning(AdminOp.id)
    return (await session.execute(statement)).first() is not None
