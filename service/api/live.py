"""Live progress (GET /jobs/{id}/events): one Server-Sent Event per change of a job.

Each script that changes what a client sees bumps the job's change counter `seq` in the same
call (lua/includes/outbox.lua). One `ChangeWatch` per API process polls the counters of every
job that has an open stream, all in one round trip per tick, and wakes the streams whose job
changed; only those read the job again. So an idle stream costs one pipelined HGET per
tick, and a thousand streams cost one round trip per tick, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from litestar.response import ServerSentEventMessage

from service.errors import NotFound
from service.jobs.views import get_job
from service.runtime import Runtime
from service.state.fsm import TERMINAL
from service.state.outbox import Outbox

log = logging.getLogger("tollgate.live")

KEEPALIVE_S = 15.0
# A stream on a job that did not change for settings.stream_idle ends with this hint: a
# client that still wants the job opens a new stream after it (TOLLGATE_STREAM_IDLE).
IDLE_RETRY_MS = 5000


class ChangeWatch:
    def __init__(self, outbox: Outbox, interval: float) -> None:
        self.outbox = outbox
        self.interval = interval
        # job id -> {a stream's wake-up event: the change counter as of its last view}
        self.watchers: dict[str, dict[asyncio.Event, str | None]] = {}
        self.task: asyncio.Task[None] | None = None
        self.ticks = 0

    @contextlib.contextmanager
    def watch(self, job_id: str, seen: str | None) -> Iterator[asyncio.Event]:
        """Wakes the stream when the job's counter is no longer `seen`: the counter read
        before the view the stream has sent (None: the job had no live record)."""
        changed = asyncio.Event()
        self.watchers.setdefault(job_id, {})[changed] = seen
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._poll(), name="tollgate-change-watch")
        try:
            yield changed
        finally:
            waiting = self.watchers.get(job_id)
            if waiting is not None:
                waiting.pop(changed, None)
                if not waiting:
                    del self.watchers[job_id]

    async def _poll(self) -> None:
        while self.watchers:
            started = time.monotonic()
            job_ids = list(self.watchers)
            try:
                seqs = await self.outbox.seqs(job_ids)
            except Exception:  # Redis away for a moment: the streams wait, then go on
                log.exception("reading change counters failed")
            else:
                self.ticks += 1
                for job_id, seq in zip(job_ids, seqs, strict=True):
                    waiting = self.watchers.get(job_id, {})
                    for changed, seen in waiting.items():
                        if seen != seq:
                            # The stream reads the job after this: what it then sends is
                            # at least as new as `seq`.
                            waiting[changed] = seq
                            changed.set()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))


def change_watch(state: Any, rt: Runtime) -> ChangeWatch:
    """The process's one ChangeWatch, made on the first stream (on the app's event loop)."""
    watch: ChangeWatch | None = getattr(state, "change_watch", None)
    if watch is None:
        watch = ChangeWatch(Outbox(rt.core), rt.settings.events_poll_interval)
        state.change_watch = watch
    return watch


async def opening(rt: Runtime, user_id: str, job_id: str) -> tuple[dict[str, Any], str | None]:
    """The stream's first view and the job's change counter read just before it (so any
    change after the counter was read wakes the stream); NotFound as GET /jobs/{id}."""
    if rt.core.keys.job(job_id) is None:
        raise NotFound(f"no job {job_id!r}")
    [seq] = await Outbox(rt.core).seqs([job_id])
    return await get_job(rt, user_id, job_id, with_items=False), seq


def _message(view: dict[str, Any], number: int) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=json.dumps(view, separators=(",", ":")), event="job",
                                  id=number)


def _shown(view: dict[str, Any]) -> tuple[Any, ...]:
    return view["status"], view["done_items"], view["failed_items"]


async def job_events(rt: Runtime, watch: ChangeWatch, user_id: str, first: dict[str, Any],
                     seen: str | None) -> AsyncIterator[ServerSentEventMessage]:
    """The stream of one job: `first` at once, then one event per change of its status or
    counts, at most one per poll interval, until a terminal status has been sent. `seen`:
    the change counter read before `first` (see `opening`)."""
    job_id, number, view = first["id"], 0, first
    yield _message(view, number)
    if view["status"] in TERMINAL:
        return
    idle_s, changed_at = rt.settings.stream_idle, time.monotonic()
    with watch.watch(job_id, seen) as changed:
        while True:
            idle_left = idle_s - (time.monotonic() - changed_at)
            if idle_left <= 0:
                yield ServerSentEventMessage(comment="idle", data=None, retry=IDLE_RETRY_MS)
                return
            try:
                await asyncio.wait_for(changed.wait(), min(KEEPALIVE_S, idle_left))
            except TimeoutError:
                if time.monotonic() - changed_at < idle_s:
                    # data=None: a comment only (an empty data line would be an event)
                    yield ServerSentEventMessage(comment="keep-alive", data=None)
                continue
            changed.clear()
            try:
                latest = await get_job(rt, user_id, job_id, with_items=False)
            except NotFound:  # gone from Redis and never flushed (a Redis loss): nothing more
                log.warning("job %s is gone: its event stream ends", job_id)
                return
            if _shown(latest) == _shown(view):
                continue
            view, number, changed_at = latest, number + 1, time.monotonic()
            yield _message(view, number)
            if view["status"] in TERMINAL:
                return
