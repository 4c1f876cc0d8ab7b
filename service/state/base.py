"""What every part of Core shares: the client, the scripts and how they are run by name, and
the marks a successful script leaves for the metrics and the flusher's due index.

Core (service.state.store) is this, its reads (service.state.reads) and its calls by concern:
users and credits (service.state.users), the flusher's (service.state.flushing), jobs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from service.state.autopipeline import AutoPipeline
from service.state.calls import SPECS, ArgValue, KeyValue, bind
from service.state.codes import Code
from service.state.keys import KeySpace
from service.state.marks import DueMarks
from service.state.reads import StateReads
from service.state.replies import check_reply
from service.state.scripts import Script, load_scripts

MARK_AGAIN_S = 600  # how often a process adds a bucket it uses to `tg:buckets` again


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class CoreBase(StateReads):
    def __init__(self, client: Any, keys: KeySpace, *, autopipeline: bool = False) -> None:
        self.client = client
        self.keys = keys
        self.scripts: dict[str, Script] = load_scripts()
        # Scripts and single-key reads go through `runner`: the client itself, or an
        # AutoPipeline over it that batches what concurrent requests send in one loop turn.
        self.runner: Any = AutoPipeline(client) if autopipeline else client
        self._buckets_marked: dict[int, float] = {}  # bucket -> when this process marked it
        self.marks = DueMarks(self.runner, keys)

    def _now(self) -> int:
        """The clock of every call (tests pin `service.state.base.now_ms`)."""
        return now_ms()

    async def close(self) -> None:
        await self.marks.sent()  # the due-index marks of the last calls
        await super().close()

    async def run_script(self, name: str, *, keys: Mapping[str, KeyValue],
                         args: Mapping[str, ArgValue] | None = None) -> Any:
        """Runs lua/<name>.lua with its keys and arguments by name (service.state.calls)."""
        key_list, argv = bind(name, keys=keys, args=args)
        return await self.scripts[name](self.runner, key_list, argv)

    async def run_named(self, name: str, *, keys: Mapping[str, KeyValue],
                        args: Mapping[str, ArgValue] | None = None) -> dict[str, Any]:
        """run_script for a script that answers fields (no code): the reply by name."""
        return SPECS[name].named(await self.run_script(name, keys=keys, args=args))

    async def run_checked(self, name: str, *, keys: Mapping[str, KeyValue],
                          args: Mapping[str, ArgValue] | None = None,
                          ) -> tuple[Code, dict[str, Any]]:
        """run_script for a script that answers a code: (the code, the reply by name) on a
        success, else the matching TollgateError raised (check_reply)."""
        reply = await self.run_script(name, keys=keys, args=args)
        return check_reply(reply, name), SPECS[name].named(reply)

    async def _use_bucket(self, bucket: int, *, at_once: bool = False) -> None:
        """Adds the bucket to the set a metrics scrape reads, after a script there that
        provisioned, funded or reserved succeeded: a refused call writes nothing. Once per
        process every 10 minutes (SADD is idempotent, the set only grows): a crash between
        the script and the SADD, or a Redis that lost the set, is mended by the next call.
        `at_once`: a user was just created or rebuilt there, maybe in a Redis that lost the
        set (the flusher's safety net would find it within a cycle; the webhook sender and
        queue position need it now)."""
        last = self._buckets_marked.get(bucket, -MARK_AGAIN_S)
        if at_once or time.monotonic() - last >= MARK_AGAIN_S:
            await self.runner.execute_command("SADD", self.keys.buckets_in_use, bucket)
            self._buckets_marked[bucket] = time.monotonic()
        await self._mark_due(bucket, now_ms())  # its ledger entry waits for the flusher

    async def _mark_job_due(self, job_id: str, due_ms: int) -> None:
        bucket = self.keys.bucket_of_job(job_id)
        if bucket is not None:  # it is: job_keys checked the id before the script ran
            await self._mark_due(bucket, due_ms)

    async def _mark_due(self, bucket: int, due_ms: int) -> None:
        """Tells the flusher's due index (service/state/due.py) that the bucket has work due
        by `due_ms`, after the script that made it: the index lives in slots of its own,
        which a bucket's script may not write. ZADD LT never postpones an earlier mark. A
        crash between the script and this call is mended by the flusher's safety net.
        Auto-pipelined, it goes with the other marks of this loop turn, unawaited
        (service/state/marks.py); otherwise (a Cluster, fakeredis) a ZADD of its own."""
        if self.runner is self.client:
            await self.client.execute_command("ZADD", self.keys.due_index(bucket), "LT", due_ms,
                                              bucket)
        else:
            self.marks.mark(bucket, due_ms)
