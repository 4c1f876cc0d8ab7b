"""Scheduling in the system suite (docs/scheduling.md): mixed priorities, start deadlines and
a backlog user, through the real dispatcher in the flusher process.

- Jobs with `priority` high, normal or low (the suite's users are pro: all allowed), given
  on the job or taken from a rule the user made with that priority.
- Jobs with a short `start_deadline_s`: each must end `canceled` with reason `deadline`,
  never started, or have started by its deadline (plus the 2 s the contract gives the
  dispatcher to notice it).
- The first user keeps a backlog: several low-priority jobs at once on each of its turns.

The common books (every credit held is released or charged, once) must still close.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.system.books import Report
    from tests.system.stacks import System
    from tests.system.workload import Workload

DEADLINES_S = (1, 2, 30)
SLACK_S = 2.0  # the contract: ended within 2 s of its deadline
BACKLOG_JOBS = 4


def _when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


class Scheduling:
    share = 0.25

    async def act(self, work: Workload, user: str) -> None:
        roll = work.rng.random()
        if work.users and user == work.users[0]:  # the backlog user
            await asyncio.gather(*(work.run_job(user, "run", extra={"priority": "low"})
                                   for _ in range(BACKLOG_JOBS)))
        elif roll < 0.35:
            priority = work.rng.choice(("high", "normal", "low"))
            await work.run_job(user, "run", extra={"priority": priority})
        elif roll < 0.5:
            await self.rule_job(work, user, work.rng.choice(("high", "low")))
        else:
            await self.deadline_job(work, user, work.rng.choice(DEADLINES_S))

    async def rule_job(self, work: Workload, user: str, priority: str) -> None:
        """A job that takes its priority from a rule made with it, deleted after the job
        was created (the job keeps its copy)."""
        made = await work.call("POST /rules (priority)", "POST", work.api("/rules"),
                               user=user, expect={201},
                               json={"name": f"priority {priority}", "priority": priority})
        if made is None:
            return
        rule = made.json()
        if rule.get("priority") != priority:
            work.answers.unexpected.append(f"rule made with priority {priority}: {rule}")
        try:
            await work.run_job(user, "run", extra={"rule_id": rule["id"]})
        finally:
            await work.call("DELETE /rules (priority)", "DELETE", work.api(f"/rules/{rule['id']}"),
                            user=user, expect={204})

    async def deadline_job(self, work: Workload, user: str, seconds: int) -> None:
        """run_job's steps, where a 409 may be the deadline's: the job may be canceled
        before its uploads, confirm or execute arrive."""
        made = await work.create(user, "run", extra={"start_deadline_s": seconds})
        if made is None:
            return
        record, view, data = made
        late = frozenset({409})
        for upload, content in zip(view["uploads"], data, strict=True):
            if await work.call("PUT upload (deadline)", upload["method"], upload["url"],
                               user=None, expect={200}, refusals=late,
                               headers=upload["headers"], content=content,
                               job=record) is None:
                break
        else:
            path = f"/jobs/{record.id}"
            if await work.call("POST confirm (deadline)", "POST",
                               work.api(f"{path}/confirm-upload"), user=user, expect={200},
                               refusals=late, job=record) is not None:
                await work.call("POST execute (deadline)", "POST", work.api(f"{path}/execute"),
                                user=user, expect={202}, refusals=late, job=record)
        await work.wait_final(record, 30.0)

    async def check(self, system: System, work: Workload, report: Report) -> None:
        problems: list[str] = []
        counts: dict[str, int] = {"deadline_jobs": 0, "ended_by_deadline": 0,
                                  "started_in_time": 0}
        for record in work.jobs.values():
            seconds = record.extra.get("start_deadline_s")
            if seconds is None or work.lossy(record) or record.final is None:
                continue
            counts["deadline_jobs"] += 1
            final: dict[str, Any] = record.final
            created, started = _when(final.get("created_at")), _when(final.get("started_at"))
            if final["status"] == "canceled" and final.get("reason") == "deadline":
                counts["ended_by_deadline"] += 1
                if started is not None:
                    problems.append(f"{record.id}: canceled by its deadline after it started")
                if final["refunded"] + final["charged"] != final["cost"]:
                    problems.append(f"{record.id}: deadline cancel did not release all: {final}")
            elif started is not None and created is not None:
                late = (started - created).total_seconds() - seconds
                if late > SLACK_S:
                    problems.append(f"{record.id}: started {late:.1f} s after its "
                                    f"{seconds} s start deadline")
                else:
                    counts["started_in_time"] += 1
        report.figures["scheduling"] = counts
        report.check("scheduling: start deadlines", problems)


FEATURE = Scheduling()
