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
import functools
import logging
from typing import Any

from service.state.keys import KeySpace

log = logging.getLogger("tollgate.state")


class DueMarks:
    def __init__(self, runner: Any, keys: KeySpace) -> None:
        self.runner = runner
        self.keys = keys
        self._pending: dict[str, dict[int, int]] = {}  # shard key -> bucket -> earliest due
        self._tasks: set[asyncio.Future[Any]] = set()  # strong refs: tasks are weakly held
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
        # One future per shard, no task of our own: an auto-pipelined runner answers
        # execute_command with a future at once (the ZADDs join its next batch); any other
        # runner's coroutine becomes a task.
        pending, self._pending = self._pending, {}
        self.commands += len(pending)
        for key, members in pending.items():
            try:
                sent = asyncio.ensure_future(self.runner.execute_command(
                    "ZADD", key, "LT",
                    *(v for bucket, due in members.items() for v in (due, bucket))))
            except Exception as error:  # a runner that fails before any await
                self._log_lost(len(members), error)
                continue
            self._tasks.add(sent)
            sent.add_done_callback(functools.partial(self._done, buckets=len(members)))

    def _done(self, sent: asyncio.Future[Any], buckets: int) -> None:
        self._tasks.discard(sent)
        error = None if sent.cancelled() else sent.exception()
        if error is not None:
            self._log_lost(buckets, error)

    @staticmethod
    def _log_lost(buckets: int, error: BaseException) -> None:
        # Redis away: the flusher's safety net finds the work
        log.warning("due-index marks of %d buckets not written (%s); the flusher's "
                    "safety net finds their work", buckets, error)
