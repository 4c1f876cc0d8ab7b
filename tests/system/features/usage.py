"""The usage statement at the books: after the run, GET /me/usage?group_by=day of the busiest
users, and GET /admin/usage across users, give each UTC day's `charged` as the SQL credit
ledger sums that day's `charge` rows, and count the jobs jobs_log holds as finished then.
It only reads: it takes no turns of the workload (share 0)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.system.books import Report
    from tests.system.stacks import System
    from tests.system.workload import Workload

USERS = 4  # the busiest users are compared one by one
SETTLE_S = 10.0  # the books have waited for the flush already; a little more for stragglers


def _days(rows: list[Any]) -> dict[str, list[int]]:
    """(at, amount or None) rows: per UTC day, [rows, -SUM(amount)]."""
    days: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for at, amount in rows:
        moment = at if isinstance(at, datetime) else datetime.fromisoformat(str(at))
        day = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
        days[day.date().isoformat()][0] += 1
        days[day.date().isoformat()][1] -= int(amount or 0)
    return dict(days)


class UsageStatement:
    share = 0.0

    async def act(self, work: Workload, user: str) -> None:
        return None

    async def check(self, system: System, work: Workload, report: Report) -> None:
        from tests.system.books import _sql

        url = system.stack.database_url
        busiest = [row.user_id for row in await asyncio.to_thread(
            _sql, url, "SELECT user_id, COUNT(*) AS n FROM jobs_log GROUP BY user_id "
            "ORDER BY n DESC, user_id LIMIT :n", n=USERS)]
        today = datetime.now(UTC).date()
        span = {"from": (today - timedelta(days=2)).isoformat(), "to": today.isoformat(),
                "group_by": "day"}
        report.figures["usage_users_compared"] = len(busiest)

        async def compare(user: str | None) -> list[str]:
            where = "" if user is None else " AND user_id = :user"
            params = {} if user is None else {"user": user}
            charges = _days(await asyncio.to_thread(
                _sql, url, f"SELECT at, amount FROM credit_ledger WHERE kind = 'charge'{where}",
                **params))
            finished = _days(await asyncio.to_thread(
                _sql, url, "SELECT finished_at, NULL FROM jobs_log "
                f"WHERE finished_at IS NOT NULL{where}", **params))
            if user is None:
                answer = await work.call("GET /admin/usage", "GET", work.api("/admin/usage"),
                                         user="books-admin", admin=True, expect={200},
                                         params=span)
            else:
                answer = await work.call("GET /me/usage", "GET", work.api("/me/usage"),
                                         user=user, expect={200}, params=span)
            if answer is None or answer.status_code != 200:
                return [f"{user or 'every user'}: no statement "
                        f"({None if answer is None else answer.status_code})"]
            got = {item["period"]: (item["jobs"], item["charged"])
                   for item in answer.json()["items"]}
            wanted = {day: (finished.get(day, [0, 0])[0], charges.get(day, [0, 0])[1])
                      for day in sorted(set(charges) | set(finished))
                      if span["from"] <= day <= span["to"]}
            return [] if got == wanted else [
                f"{user or 'every user'}: statement (jobs, charged) {got}, SQL {wanted}"]

        async def all_of_them() -> list[str]:
            problems = []
            for user in [*busiest, None]:
                problems += await compare(user)
            return problems

        deadline = time.monotonic() + SETTLE_S
        problems = await all_of_them()
        while problems and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            problems = await all_of_them()
        report.check("the usage statement's charged per day equals the ledger's charges",
                     problems)


FEATURE = UsageStatement()
