"""`tollgate audit`: each user's money in Redis against the SQL ledger and the job history.

For every user (or one, `--user ID`) it reads the Redis record, the user's jobs still in
Redis and the ledger entries not yet flushed (in one MULTI), then the SQL side, and checks:

- granted = available + reserved + spent (the credit invariant);
- available = SUM(amount) of the user's ledger (SQL, plus entries still waiting in Redis);
- spent = -SUM(charges) = SUM(charged) of its jobs in history and its finished jobs not
  flushed yet;
- granted = SUM(grants) + SUM(expires), signup included (an expiry takes from granted);
- every grant Redis holds: amount = remaining + held + charged + expired + removed, its
  credit_grants row has the same amount and kind, and its remaining credits are part of
  available (their sum is at most available: the rest is the base);
- reserved = the cost of its live jobs;
- the plan in Redis is the plan in `users`;
- every job the ledger names (hold, release, charge) has its jobs_log row, or is still in
  Redis (live, or finished and not flushed yet: its release and charge, counted above as
  waiting, are written with its row).

A user SQL knows but Redis does not is noted, not counted: its record is rebuilt from SQL on
its next request (its lost jobs get their rows then). Any difference makes the command exit
1. On a busy system an operation that lands between the Redis and the SQL read can show as a
difference: run it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.flusher.dead_letters import money_rows
from service.history.balances import (
    LedgerTotals,
    history_charged,
    jobs_in_history,
    jobs_without_row,
    ledger_ids_present,
    ledger_totals,
    user_grants,
    user_ids,
    user_plan,
)
from service.history.engine import make_engine, make_session_factory
from service.history.models import CreditGrant
from service.settings import Settings
from service.state.clients import state_redis
from service.state.fsm import LIVE
from service.state.keys import KeySpace
from service.state.records import LedgerEntry
from service.state.store import Core

Sessions = async_sessionmaker[AsyncSession]


@dataclass(frozen=True, slots=True)
class Difference:
    user_id: str
    what: str
    redis: int | str | None
    sql: int | str | None

    def __str__(self) -> str:
        return f"{self.user_id}: {self.what}: redis {self.redis}, sql {self.sql}"


@dataclass(slots=True)
class AuditReport:
    users: int = 0
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


async def audit_user(core: Core, sessions: Sessions, user_id: str, report: AuditReport) -> None:
    snap = await core.money_snapshot(user_id)
    in_redis = {job.id for job in snap.jobs}
    # What Redis still holds to write: its ledger list, and the release and charge of each
    # finished job not flushed yet (written with its jobs_log row, from the job hash).
    pending = [*snap.pending, *(LedgerEntry.from_dict({**row, "at": 0})
                                for job in snap.jobs if job.state not in LIVE
                                for row in money_rows(job))]
    async with sessions() as session:
        plan = await user_plan(session, user_id)
        totals = (await ledger_totals(session, [user_id])).get(user_id, LedgerTotals())
        flushed = await ledger_ids_present(session, [entry.id for entry in pending])
        _, history_charges = (await history_charged(session, [user_id])).get(user_id, (0, 0))
        in_history = await jobs_in_history(session, list(in_redis))
        without_row = (await jobs_without_row(session, [user_id])).get(user_id, [])
        in_sql = {grant.id: grant for grant, _ in await user_grants(session, user_id)}
    grants = await core.user_grants(user_id)
    report.users += 1
    if snap.user is None:
        if plan is None and not totals.entries:
            report.differences.append(Difference(user_id, "unknown user", None, None))
        else:
            lost = f"; {len(without_row)} jobs lost with it" if without_row else ""
            report.notes.append(f"{user_id}: not in Redis (rebuilt from SQL on its next "
                                f"request); SQL balance {totals.total}{lost}")
        return

    # Every job the ledger names has its jobs_log row, or is still in Redis.
    orphans = [job_id for job_id in without_row if job_id not in in_redis]
    if orphans:
        report.differences.append(Difference(
            user_id, "jobs named in the ledger without a jobs_log row, not in Redis "
            f"(first: {orphans[0]})", len(orphans), 0))

    # The entries still in Redis that SQL does not hold yet, once each.
    waiting = {entry.id: entry for entry in pending if entry.id not in flushed}.values()
    balance = totals.total + sum(entry.amount for entry in waiting)
    charges = totals.charges + sum(e.amount for e in waiting if e.kind == "charge")
    granted = totals.grants + totals.expired + sum(
        e.amount for e in waiting if e.kind in ("grant", "expire"))
    unflushed_charged = sum(job.charged for job in snap.jobs
                            if job.state not in LIVE and job.id not in in_history)
    live_cost = sum(job.cost for job in snap.jobs if job.state in LIVE)

    user = snap.user
    checks: list[tuple[str, int | str, int | str]] = [
        ("granted - reserved - spent", user.granted - user.reserved - user.spent,
         user.available),
        ("available vs SUM(ledger)", user.available, balance),
        ("spent vs -SUM(charges)", user.spent, -charges),
        ("spent vs charged jobs (history + unflushed)", user.spent,
         history_charges + unflushed_charged),
        ("granted vs SUM(grants) + SUM(expires)", user.granted, granted),
        ("SUM(grant remaining) at most available", min(
            sum(g.remaining for g in grants), user.available), sum(g.remaining for g in grants)),
        ("reserved vs cost of live jobs", user.reserved, live_cost),
        ("plan", user.plan, plan or "(no users row)"),
    ]
    # A grant whose ledger entry still waits in Redis gets its credit_grants row with it.
    unflushed = {(e.kind, e.amount) for e in waiting}
    for grant in grants:
        kept = in_sql.get(grant.id)
        if kept is None and ("grant", grant.amount) in unflushed:
            kept = CreditGrant(id=grant.id, kind=grant.kind, amount=grant.amount)
        parts = (grant.remaining + grant.held + grant.charged + grant.expired
                 + grant.removed)
        checks += [
            (f"grant {grant.id}: remaining + held + charged + expired + removed", parts,
             grant.amount),
            (f"grant {grant.id}: amount and kind", f"{grant.amount} {grant.kind}",
             "(no credit_grants row)" if kept is None else f"{kept.amount} {kept.kind}"),
        ]
    report.differences += [Difference(user_id, what, redis, sql)
                           for what, redis, sql in checks if redis != sql]


async def run_audit(core: Core, sessions: Sessions, users: Sequence[str] | None = None
                    ) -> AuditReport:
    """Audits these users, or every user Redis or SQL knows."""
    if users is None:
        async with sessions() as session:
            known = set(await user_ids(session)) | set(await ledger_totals(session))
        users = sorted(known | set(await core.known_user_ids()))
    report = AuditReport()
    for user_id in users:
        await audit_user(core, sessions, user_id, report)
    return report


async def audit(settings: Settings, user_id: str | None) -> int:
    """`tollgate audit [--user ID]`: prints the differences; 1 when there is any."""
    client = state_redis(settings)
    engine = make_engine(settings.database_url)
    try:
        core = Core(client, KeySpace(settings.key_prefix, settings.buckets))
        report = await run_audit(core, make_session_factory(engine),
                                 None if user_id is None else [user_id])
    finally:
        await engine.dispose()
        await client.aclose()
    for note in report.notes:
        print(f"note: {note}")
    for difference in report.differences:
        print(f"DIFFERENCE {difference}")
    print(f"audit: {report.users} users checked, {len(report.differences)} differences")
    return 1 if report.differences else 0
