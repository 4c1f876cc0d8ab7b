"""Credit grants that expire, in the system suite (issue 20).

Some turns give the user a small grant (paid or promotional) that expires a few seconds
later, then run a job that draws from it: grants expire during the run, some while a job
holds their credits. At the books, for every grant the suite made: its credit_grants row
says its amount, kind and expiry; SQL's `expire:<grant id>...` rows took at most its amount;
one past its expiry by more than two flusher periods is no longer open in GET /me, and the
expiry sweep left nothing in it (amount = remaining + drawn + expired, with remaining 0:
what expired is at most what was not drawn); an open grant shows no more remaining than its
amount less what expired. `tollgate audit` (the common books) checks every grant's parts
in Redis: amount = remaining + held + charged + expired + removed.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.system.books import Report, _sql, _until
from tests.system.stacks import System
from tests.system.workload import Workload

SETTLE_S = 20.0
MAX_GRANTS = 8  # made by the suite, a user


@dataclass
class Made:
    id: str = ""
    user: str = ""
    kind: str = ""
    amount: int = 0
    expires_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    key: str = ""


def _utc(value: Any) -> datetime:
    when: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass
class ExpiringGrants:
    share: float = 0.2
    made: list[Made] = field(default_factory=list)

    async def start(self, work: Workload) -> None:
        self.made = []

    async def act(self, work: Workload, user: str) -> None:
        mine = [m for m in self.made if m.user == user]
        if len(mine) < MAX_GRANTS:
            grant = Made(user=user, kind=work.rng.choice(("paid", "promotional")),
                         amount=work.rng.randint(5, 40),
                         expires_at=datetime.now(UTC) + timedelta(
                             seconds=work.rng.uniform(2.0, 8.0)),
                         key=f"expiring-{uuid.uuid4().hex}")
            answer = await work.call(
                "POST credits (expiring)", "POST", work.api(f"/admin/users/{user}/credits"),
                user="sys-admin", admin=True, expect={200}, headers={"Idempotency-Key": grant.key},
                json={"amount": grant.amount, "reason": "system suite: expiring",
                      "kind": grant.kind, "expires_at": grant.expires_at.isoformat()})
            if answer is not None:
                self.made.append(grant)
        # A job that draws from it (burn-down order: the earliest expiry first).
        await work.run_job(user, "run")

    async def check(self, system: System, work: Workload, report: Report) -> None:
        url = system.stack.database_url
        period = system.stack.timing.flusher_interval
        figures = report.figures["grants"] = {"made": len(self.made)}

        async def probe() -> list[str]:
            problems: list[str] = []
            rows = await asyncio.to_thread(
                _sql, url, "SELECT id, user_id, kind, amount, expires_at, ledger_id "
                "FROM credit_grants")
            expired_rows = await asyncio.to_thread(
                _sql, url, "SELECT id, user_id, amount FROM credit_ledger WHERE kind = 'expire'")
            expired: dict[str, int] = {}
            for row in expired_rows:
                grant_id = str(row.id).split(":")[1]
                expired[grant_id] = expired.get(grant_id, 0) - int(row.amount)
                if int(row.amount) >= 0:
                    problems.append(f"expire row {row.id}: amount {row.amount}, not negative")
            figures["expire_rows"] = len(expired_rows)
            figures["expired_credits"] = sum(expired.values())
            known = {row.id: row for row in rows}
            problems += [f"expire rows name grant {grant_id}, not in credit_grants"
                         for grant_id in expired if grant_id not in known]
            open_by_user: dict[str, dict[str, dict[str, Any]]] = {}
            for user in sorted({m.user for m in self.made}):
                answer = await work.call("GET /me", "GET", work.api("/me"), user=user,
                                         expect={200})
                if answer is None:
                    problems.append(f"{user}: GET /me did not answer")
                    continue
                open_by_user[user] = {g["id"]: g for g in answer.json()["credits"]["grants"]}
            now = datetime.now(UTC)
            for made in self.made:
                # The grant's row: found by its ledger row (grant:<user>:<op digest>).
                matches = [row for row in rows if row.user_id == made.user
                           and int(row.amount) == made.amount and row.kind == made.kind
                           and row.expires_at is not None
                           and abs((_utc(row.expires_at) - made.expires_at).total_seconds())
                           < 0.01]
                if not matches:
                    problems.append(f"grant {made.key} of {made.user}: no credit_grants row "
                                    f"of {made.amount} {made.kind}")
                    continue
                row = matches[0]
                gone = expired.get(row.id, 0)
                if gone > made.amount:
                    problems.append(f"grant {row.id}: {gone} expired of {made.amount}")
                shown = open_by_user.get(made.user, {}).get(row.id)
                if made.expires_at < now - timedelta(seconds=2 * period + 1):
                    if shown is not None:
                        problems.append(f"grant {row.id} expired at {made.expires_at} is "
                                        f"still open: {shown}")
                elif shown is not None and shown["remaining"] > made.amount - gone:
                    problems.append(f"grant {row.id}: remaining {shown['remaining']}, amount "
                                    f"{made.amount}, expired {gone}")
            figures["expired_during_run"] = sum(
                1 for m in self.made if m.expires_at < now)
            return problems

        report.check("grants: rows, expiries within two flusher periods, expire rows",
                     await _until(SETTLE_S, probe))
        if self.made and not any(m.expires_at < datetime.now(UTC) for m in self.made):
            report.check("grants: some expired during the run", ["none expired"])


FEATURE = ExpiringGrants()
