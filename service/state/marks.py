"""Due-index marks, coalesced: what every Core call that leaves due work in a bucket owes the
flusher's index (service/state/due.py), for many calls at once.

A mark is `ZADD <shard> LT <due ms> <bucket>`, asked for after the script that made the
work replied, so the index never names work that is not there yet. For an auto-pipelined
Core (the API and the flusher on a standalone Redis; elsewhere Core awaits a ZADD of its
own after each script) the marks asked for in one event-loop turn go out together at its
end, one ZADD per index shard with every bucket
of that shard, and the caller does not wait for them: a batch of script replies (the
auto-pipeline resolves them in one turn) costs at most DUE_SHARDS commands and no caller a
second round trip. Reserve and cancel through an auto-pipelined Core (32 concurrent users,
a micro-benchmark) cost 32-36 us of client CPU a call without marks, +13.7 us with a mark
awaited on its own round trip, +10.6 us coalesced (and no round trip for the caller). A
mark lost to a crash (or a failed send, logged) is found by the flusher's safety net, as one
lost between a script and its mark would be.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.state.keys import KeySpace

log = logging.getLogger("tollgate.state")


class DueMarks:
    def __init__(self, runner: Any, keys: KeySpace) -> None:
        self.runner = runner
        self.keys = keys
        self._pending: dict[str, dict[int, int]] = {}  # shard key -> bucket -> earliest due
        self._tasks: set[asyncio.Task[None]] = set()  # strong refs: tasks are weakly held
        self.marks = 0  # asked for
        self.commands = 0  # sent (marks / commands: how much coalescing happened)

    def mark(self, bucket: int, due_ms: int) -> None:
        """Joins the send at the end of this loop turn."""
        self.marks += 1
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._send)
        members = self._pending.setdefault(self.keys.due_index(bucket), {})
        members[bucket] = min(due_ms, members.get(bucket, due_ms))

    async def sent(self) -> None:
        """Waits until every mark asked for so far is in Redis (tests, shutdown)."""
        await asyncio.sleep(0)  # this turn's send starts
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _send(self) -> None:
        pending, self._pending = self._pending, {}
        task = asyncio.ensure_future(self._write(pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, pending: dict[str, dict[int, int]]) -> None:
        self.commands += len(pending)
        try:
            await asyncio.gather(*(
                self.runner.execute_command(
                    "ZADD", key, "LT", *(v for bucket, due in members.items()
                                         for v in (due, bucket)))
                for key, members in pending.items()))
        except Exception as error:  # Redis away: the flusher's safety net finds the work
            log.warning("due-index marks of %d buckets not written (%s); the flusher's "
                        "safety net finds their work", sum(map(len, pending.values())), error)
