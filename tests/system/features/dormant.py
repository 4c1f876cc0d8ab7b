"""Users who go quiet in the system suite: each makes one job, never uploads it, and never
calls again. Its hold ends by its TTL (`hold_expired`), or, when a state store is lost while
it is held, by the flusher rebuilding the user from SQL (service/flusher/lost_users.py):
nobody's request would. At the books (the common checks call only the workload's own users,
so these stay dormant): every dormant job the ledger names has its one jobs_log row,
canceled, charged 0, `hold_expired` or `lost_with_redis`, and its hold is released.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from tests.system.books import Report, _sql, _until
from tests.system.stacks import System
from tests.system.workload import Workload

SETTLE_S = 20.0
STEADY_S = 0.3
ENDINGS = {("canceled", "hold_expired"), ("canceled", "lost_with_redis")}


@dataclass
class Dormant:
    share: float = 0.1
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> its dormant user
    steady: asyncio.Task[None] | None = None
    made: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, work: Workload) -> None:
        self.jobs, self.steady, self.made = {}, None, []

    async def act(self, work: Workload, user: str) -> None:
        """One new user a turn; in the fault phase, from its first turn on, a steady stream
        (one every STEADY_S), so that some hold when a store is lost: a hold lives
        TOLLGATE_HOLD_TTL (3 s here) and reaches SQL within a flusher pass."""
        if work.phase == "fault" and self.steady is None:
            self.steady = asyncio.create_task(self._steadily(work, work.stop))
        await self._one(work)

    async def _steadily(self, work: Workload, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.made.append(asyncio.create_task(self._one(work)))
            await asyncio.sleep(STEADY_S)

    async def _one(self, work: Workload) -> None:
        quiet = f"dormant-{uuid.uuid4().hex[:10]}"  # provisioned by this, its only call
        body = {"model": "thumbnail",
                "items": [{"name": "a.png", "content_type": "image/png", "size": 64}]}
        # Keyed: a create retried after no answer (an API process killed) makes no second job.
        created = await work.call("POST /jobs (dormant)", "POST", work.api("/jobs"),
                                  user=quiet, expect={200, 201}, refusals=frozenset({429}),
                                  json=body, headers={"Idempotency-Key": f"dormant-{quiet}"})
        if created is not None:
            self.jobs[created.json()["id"]] = quiet
            work.feature_jobs.add(created.json()["id"])

    async def check(self, system: System, work: Workload, report: Report) -> None:
        if self.steady is not None:
            await self.steady
        await asyncio.gather(*self.made)
        url = system.stack.database_url

        async def books() -> list[str]:
            named = {row.job_id: row.kinds for row in await asyncio.to_thread(
                _sql, url, "SELECT job_id, COUNT(*) AS kinds FROM credit_ledger "
                "WHERE user_id LIKE 'dormant-%' AND job_id IS NOT NULL GROUP BY job_id")}
            rows = {row.id: row for row in await asyncio.to_thread(
                _sql, url, "SELECT id, state, reason, charged FROM jobs_log "
                "WHERE user_id LIKE 'dormant-%'")}
            problems = []
            for job_id in self.jobs:
                row = rows.get(job_id)
                if row is None:
                    if job_id in named:
                        problems.append(f"{job_id}: the ledger names it, jobs_log has no row")
                    continue
                if (row.state, row.reason) not in ENDINGS or row.charged != 0:
                    problems.append(f"{job_id}: {row.state} ({row.reason}), charged "
                                    f"{row.charged}")
                elif named.get(job_id) not in (None, 2):  # hold and release, nothing else
                    problems.append(f"{job_id}: {named.get(job_id)} ledger rows")
            report.figures["dormant_jobs"] = len(self.jobs)
            report.figures["dormant_endings"] = {
                reason: sum(1 for job_id in self.jobs if job_id in rows
                            and rows[job_id].reason == reason)
                for reason in ("hold_expired", "lost_with_redis")}
            return problems

        report.check("a dormant user's job ends by its TTL or by the flusher's rebuild after "
                     "a loss, released, with its jobs_log row", await _until(SETTLE_S, books))


FEATURE = Dormant()
