"""API keys with spend caps in the system suite (issue 20).

Some users make a key capped at a few dozen credits a UTC day and run jobs through it
(`Authorization: Bearer tg_...`); a create that would pass the cap is a 402. At the books,
for every key: no day's spend passed its cap (SQL, jobs_log by key_id), GET /me/keys's
`spent_this_period` equals what jobs_log and the credit ledger charged through it today (every
job is final and flushed by then, so nothing is held), and every job the key made names it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.system.books import Report, _sql, _until
from tests.system.stacks import System
from tests.system.workload import Workload

SETTLE_S = 20.0
MAX_KEYS = 5  # of a user (the pro plan has 20 slots)


@dataclass
class Key:
    id: str
    secret: str
    cap: int


def _utc(value: Any) -> datetime:
    """A jobs_log time as PostgreSQL (datetime) or SQLite (text) gives it, in UTC."""
    when: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass
class CappedKeys:
    share: float = 0.25
    keys: dict[str, list[Key]] = field(default_factory=dict)  # user -> their keys, newest last

    async def start(self, work: Workload) -> None:
        """A new system, a new run: the keys of an earlier set-up are not this one's."""
        self.keys = {}

    async def act(self, work: Workload, user: str) -> None:
        mine = self.keys.setdefault(user, [])
        # Now and then a new key (a spent cap stays spent all day): keys of every phase.
        if not mine or (len(mine) < MAX_KEYS and work.rng.random() < 0.2):
            cap = work.rng.randint(20, 80)  # some reach it, some 402s
            answer = await work.call("POST /me/keys", "POST", work.api("/me/keys"), user=user,
                                     expect={201}, json={"name": "system suite", "spend_cap": {
                                         "credits": cap, "period": "day"}})
            if answer is None:
                return
            body = answer.json()
            mine.append(Key(body["id"], body["secret"], cap))
        key = mine[-1]
        await work.run_job(user, "run", auth=f"Bearer {key.secret}",
                           refusals=frozenset({402}))

    async def check(self, system: System, work: Workload, report: Report) -> None:
        url = system.stack.database_url
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        keys = [(user, key) for user, mine in self.keys.items() for key in mine]
        figures = report.figures["keys"] = {"keys": len(keys),
                                            "creates_answered_402": work.answers.counts.get(
                                                "POST /jobs 402", 0)}

        async def probe() -> list[str]:
            problems: list[str] = []
            for user, key in keys:
                rows = await asyncio.to_thread(
                    _sql, url, "SELECT id, charged, created_at FROM jobs_log "
                    "WHERE key_id = :key", key=key.id)
                by_day: dict[str, int] = {}
                for row in rows:
                    day = _utc(row.created_at).date().isoformat()
                    by_day[day] = by_day.get(day, 0) + int(row.charged)
                problems += [f"key {key.id}: {spent} charged on {day}, cap {key.cap}"
                             for day, spent in by_day.items() if spent > key.cap]
                charged_today = sum(int(row.charged) for row in rows
                                    if _utc(row.created_at) >= today)
                ledger = await asyncio.to_thread(
                    _sql, url, "SELECT l.amount, j.created_at FROM credit_ledger l JOIN "
                    "jobs_log j ON l.job_id = j.id WHERE l.kind = 'charge' AND j.key_id = :key",
                    key=key.id)
                ledger_today = -sum(int(row.amount) for row in ledger
                                    if _utc(row.created_at) >= today)
                listed = await work.call("GET /me/keys", "GET", work.api("/me/keys"),
                                         user=user, expect={200})
                if listed is None:
                    problems.append(f"key {key.id}: GET /me/keys did not answer")
                    continue
                shown = {item["id"]: item for item in listed.json()["items"]}.get(key.id)
                if shown is None:
                    problems.append(f"key {key.id} of {user} is not listed")
                    continue
                spent = shown["spent_this_period"]
                if not spent == charged_today == ledger_today or spent > key.cap:
                    problems.append(f"key {key.id}: spent_this_period {spent}, jobs_log "
                                    f"charged {charged_today}, ledger {ledger_today}, "
                                    f"cap {key.cap}")
            mine = {key.id for _, key in keys}
            named = await asyncio.to_thread(
                _sql, url, "SELECT id, key_id FROM jobs_log WHERE key_id IS NOT NULL")
            figures["jobs_through_keys"] = len(named)
            problems += [f"job {row.id} names key {row.key_id}, not one of the suite's"
                         for row in named if row.key_id not in mine]
            return problems

        report.check("api keys: caps held, spend exact", await _until(SETTLE_S, probe))


FEATURE = CappedKeys()
