"""The dispatcher: moves work from tollgate's dispatch order into each RQ queue, a few
batches ahead of the workers (docs/scheduling.md). It runs as a task of the flusher process.

Each pass, for each RQ queue: cancel the jobs whose start deadline passed, then fill the
queue up to `TOLLGATE_DISPATCH_BATCHES_PER_WORKER` batches per live worker from the head of
the queue's order: priority first, then the owners' weighted fair share, then each owner's
own order (the places lua/admit.lua gives). A hand is two steps around the RQ enqueue:
`dispatch_take` claims batches, `dispatch_done` confirms them; a dispatcher killed between
the two leaves a claim that expires, and the next take answers the same batches, which RQ's
deterministic ids keep there once. One dispatcher fills a queue at a time (a lock of a few
seconds); another waits its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

import anyio
from rq.job import Job

from service.contract import SERIALIZER, rq_job_id
from service.errors import InvalidTransition, NotFound
from service.jobs.dispatch import enqueue_batches, model_gone, rebuild_order
from service.runtime import Runtime
from service.state.base import now_ms
from service.state.fsm import JobState
from service.state.queue import live_workers, queue_depths_async, wait_for_signal
from service.state.records import JobRecord
from service.state.sched import SchedReads

log = logging.getLogger("tollgate.dispatcher")

# A claim this old is taken to be a dead dispatcher's: its batches are handed again.
CLAIM_MS = 10_000
LOCK_MS = 5_000
# The order's head read at once: a job under another's live claim is stepped over.
HEAD = 8
# While work waits for room in RQ, a pass comes when a worker signals it took a batch, and
# at least every BACKLOG_PASS_S (`wait_for_room`); BACKLOG_POLL_S: the pause of a dispatcher
# with a fixed room (tests' burst workers).
BACKLOG_POLL_S = 0.005
BACKLOG_PASS_S = 0.05
DEADLINES_PER_PASS = 500
# How often a queue's start deadlines and dead dispatchers' claims are read (a pass comes
# every BACKLOG_PASS_S while RQ is full; a deadline is met within 2 s, a claim lives 10 s).
CHECK_S = 0.1
# How often the order is rebuilt from the buckets' waiting sets (and at start).
REBUILD_S = 60.0
WORKERS_TTL_S = 1.0
# Places of the last batches handed per queue (what RQ may still hold), for `_ahead`.
HANDED_KEPT = 256
BAND_WIDTH = 1e12  # lua/admit.lua: a place is band(priority) * BAND_WIDTH + virtual tag
# Tests stop the dispatcher between its steps: "taken" (claimed, not in RQ), "enqueued".
Hook = Callable[[str], Awaitable[None]]


class Dispatcher:
    def __init__(self, rt: Runtime, *, claim_ms: int = CLAIM_MS, lock_ms: int = LOCK_MS,
                 interval: float = 0.05, hook: Hook | None = None,
                 fixed_room: int | None = None) -> None:
        self.rt = rt
        self.sched = SchedReads(rt.core)
        self.claim_ms = claim_ms
        self.lock_ms = lock_ms
        self.interval = interval
        self.hook = hook
        self.fixed_room = fixed_room  # tests' burst workers: room whatever is live
        self.token = f"{os.getpid()}-{id(self)}"
        self.workers: dict[str, int] = {}
        self._workers_read = -WORKERS_TTL_S
        self._jobs: OrderedDict[str, JobRecord] = OrderedDict()  # items, read once a job
        self._rebuilt = -REBUILD_S
        self.backlog = False  # the last pass left work waiting for room in RQ
        self._held: dict[str, float] = {}  # queue -> monotonic time its lock surely lasts to
        self._handed: dict[str, deque[float]] = {}  # queue -> places of batches handed
        self._checked: dict[str, float] = {}  # queue -> when its deadlines and claims were read

    @property
    def queues(self) -> list[str]:
        return self.rt.models.queues()

    def beside(self, stop: asyncio.Event, *, once: bool) -> Beside:
        """The dispatcher as a task beside the flusher loop, ended with it (`close`)."""
        return Beside(self, stop, once)

    async def run(self, stop: asyncio.Event) -> None:
        """Passes until `stop`; an error is logged and the pass tried again (Redis away).
        Then the queues' locks are given back: another dispatcher fills them at once."""
        try:
            await self._passes(stop)
        finally:
            await self.release()

    async def release(self) -> None:
        """Gives back the locks of the queues this dispatcher fills (best effort: a lock
        not given back expires after `lock_ms`)."""
        held, self._held = list(self._held), {}
        for queue in held:
            with contextlib.suppress(Exception):
                await self.sched.unlock(queue, self.token)

    async def _passes(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            busy = False
            try:
                if time.monotonic() - self._rebuilt >= REBUILD_S:
                    await self.rebuild()
                busy = await self.pass_once() > 0
            except Exception:
                log.exception("dispatcher pass failed; retrying")
                busy = False
            if busy:
                continue
            if self.backlog:  # work waits for room: watch RQ drain closely, cheaply
                with contextlib.suppress(Exception):
                    await self.wait_for_room(stop)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    async def wait_for_room(self, stop: asyncio.Event) -> None:
        """Until a worker of a queue with live workers took a batch (`tollgate worker`
        signals it: contract.signal_room), or BACKLOG_PASS_S passed (a plain RQ worker
        signals nothing): one blocking pop on RQ's Redis, no polling."""
        queues = [queue for queue in self.queues if self._capacity(queue) > 0]
        if self.fixed_room is not None or not queues:
            await asyncio.sleep(BACKLOG_POLL_S)
            return
        await wait_for_signal(self.rt.queue_reads, queues, BACKLOG_PASS_S)

    async def pass_once(self) -> int:
        """Deadlines and fills over every queue; returns batches handed plus jobs ended."""
        await self.read_workers()
        self.backlog = False
        done = 0
        for queue in self.queues:
            if not await self._lock(queue):
                continue
            checks = self._checks_due(queue)
            if checks:
                done += await self.expire_deadlines(queue)
            done += await self.fill(queue, recover=checks)
        return done

    def _checks_due(self, queue: str) -> bool:
        now = time.monotonic()
        if now - self._checked.get(queue, -CHECK_S) < CHECK_S:
            return False
        self._checked[queue] = now
        return True

    async def read_workers(self, force: bool = False) -> dict[str, int]:
        if force or time.monotonic() - self._workers_read >= WORKERS_TTL_S:
            queues = self.queues
            self.workers = await anyio.to_thread.run_sync(
                lambda: live_workers(self.rt.queue_connection, queues))
            self._workers_read = time.monotonic()
        return self.workers

    async def _lock(self, queue: str) -> bool:
        """The queue's lock: asked of Redis (taken or renewed) only once half its life is
        gone; until then no other dispatcher can have it."""
        now = time.monotonic()
        if self._held.get(queue, 0.0) - now > self.lock_ms / 2000:
            return True
        if await self.sched.lock(queue, self.token, self.lock_ms):
            self._held[queue] = now + self.lock_ms / 1000
            return True
        self._held.pop(queue, None)
        return False

    async def room(self, queue: str) -> int:
        """Batches the queue may still take: per live worker, less what waits in RQ."""
        if self.fixed_room is not None:
            return self.fixed_room
        workers = self.workers.get(queue, 0)
        if workers == 0:
            return 0
        depth = (await queue_depths_async(self.rt.queue_reads, [queue]))[queue]
        return workers * self.rt.settings.dispatch_batches_per_worker - depth

    async def recover(self, queue: str) -> int:
        """Hands again what a dispatcher killed between take and done left claimed (each
        batch once: the enqueue leaves one that reached RQ alone)."""
        handed = 0
        for job_id in await self.sched.due_claims(queue, now_ms(), HEAD):
            handed += max(0, await self.hand(queue, job_id, 0, None))
        return handed

    async def fill(self, queue: str, *, recover: bool = True) -> int:
        """Fills the queue's room in RQ from the head of the order. The fill's first batch
        goes to RQ's front when it is ahead of what RQ holds (`_ahead`), and then it may
        take one batch more than the room: it starts on the next worker free, not behind
        the k batches per worker RQ keeps (the depth counts it, so one at a time)."""
        handed = await self.recover(queue) if recover else 0
        room = await self.room(queue)
        first = True
        over = False  # the room is full: only a batch ahead of RQ's may still go in
        peek: list[tuple[str, float]] | None = None  # the head, when nothing was handed since
        if room == 0 and self._capacity(queue) > 0:
            peek = await self.sched.head(queue, 1)
            over = bool(peek) and self._ahead(queue, peek[0][1])
            room = 1 if over else 0
        while room > 0:
            head = await self.sched.head(queue, HEAD)
            if not head:
                break
            moved = 0
            for position, (job_id, place) in enumerate(head):
                front = first and self._ahead(queue, place)
                if over and not front:
                    break
                before = head[position + 1][1] if position + 1 < len(head) else None
                moved = await self.hand(queue, job_id, room, before, place=place,
                                        ahead=front)
                if moved >= 0:  # handed, or gone (-1: under another's live claim)
                    break
            if moved <= 0 and over:
                break
            if moved < 0:  # every job in sight is claimed
                break
            first = first and moved == 0
            peek = None
            room -= moved
            handed += moved
            over = False
        if room <= 0 and self.workers.get(queue, 0) and not self.backlog:
            self.backlog = bool(peek if peek is not None else await self.sched.head(queue, 1))
        return handed

    async def _job(self, job_id: str) -> JobRecord | None:
        job = self._jobs.get(job_id)
        if job is None:
            job = await self.rt.core.job_snapshot(job_id)
            if job is None:
                return None
            self._jobs[job_id] = job
            if len(self._jobs) > 256:
                self._jobs.popitem(last=False)
        return job

    def _capacity(self, queue: str) -> int:
        if self.fixed_room is not None:
            return self.fixed_room
        return self.workers.get(queue, 0) * self.rt.settings.dispatch_batches_per_worker

    def _ahead(self, queue: str, place: float | None) -> bool:
        """Whether a batch at `place` goes before the batches RQ may still hold: RQ holds
        at most the last `capacity` batches handed, and this one's place in tollgate's
        order is not behind the last of those (a user who arrives while another's batches
        fill RQ: at the back it would wait behind all of them, about k batch times with k
        per worker). Never in front of a batch of a higher priority band."""
        handed = self._handed.get(queue)
        capacity = min(self._capacity(queue), HANDED_KEPT)
        if place is None or not handed or capacity <= 0:
            return False
        recent = list(handed)[-capacity:]
        band = place // BAND_WIDTH
        if any(other // BAND_WIDTH < band for other in recent):
            return False
        return place <= max(recent)

    def _note_handed(self, queue: str, place: float | None, batches: int) -> None:
        if place is None:
            return
        handed = self._handed.setdefault(queue, deque(maxlen=HANDED_KEPT))
        handed.extend([place] * batches)

    async def hand(self, queue: str, job_id: str, room: int, before: float | None,
                   place: float | None = None, ahead: bool = False) -> int:
        """Hands the job's next batches (at most `room`, while their place is at most
        `before`) to RQ; returns how many, 0 when the job had none left, -1 when another
        dispatcher's claim holds it. `place`: the job's place in the order as read (None
        for a dead dispatcher's claim handed again); `ahead`: its first batch goes to RQ's
        front (a claim handed again goes to the back)."""
        sched, rt = self.sched, self.rt
        await sched.note_claim(queue, job_id, now_ms() + self.claim_ms)
        taken = await sched.take(job_id, claim_ms=self.claim_ms, most=room, before=before)
        if taken.code == "claimed":
            return -1
        if taken.code == "none":
            await sched.end_claim(queue, job_id)
            return 0
        job = None if taken.code == "gone" else await self._job(job_id)
        if job is None or job.items is None or model_gone(rt, job):
            # Ended, or its model is gone (the flusher's requeue fails it): never handed.
            await sched.place(queue, job_id, "")
            await sched.end_claim(queue, job_id)
            self._jobs.pop(job_id, None)
            return 0
        if self.hook is not None:
            await self.hook("taken")
        batches = range(taken.first, taken.last)
        # A high-priority batch goes before those waiting in RQ: it starts on the next
        # worker free, not behind the batches per worker already there; so does a batch
        # whose place is not behind those RQ holds (`_ahead`). The hand-off is the same
        # either way: RQ's ids keep a batch there once, wherever it went in.
        front = taken.code == "take" and (taken.priority == "high" or ahead)
        await enqueue_batches(rt, job, batches, new_only=True, at_front=front)
        if self.hook is not None:
            await self.hook("enqueued")
        handed = await sched.done(job_id, taken.first, taken.last,
                                  lease_ms=rt.settings.lease_ttl * 1000)
        if handed.code != "ok":
            await sched.end_claim(queue, job_id)
            if handed.code == "gone":  # canceled between the take and the enqueue: undo it
                await self._unhand(queue, job_id, batches)
            return 0
        self._note_handed(queue, place if taken.code == "take" else None, len(batches))
        waited = (None if not handed.first_dispatch or handed.queued_at_ms is None
                  else (now_ms() - handed.queued_at_ms) / 1000)
        # Its new place, the claim's end and the wait's count: one round trip.
        await sched.place(queue, job_id, handed.score, items=handed.items,
                          priority=handed.priority, vtag=handed.vtag, end_claim=True,
                          wait_s=waited)
        if not handed.score:
            self._jobs.pop(job_id, None)
        return len(batches)

    async def _unhand(self, queue: str, job_id: str, batches: range) -> None:
        await self.sched.place(queue, job_id, "")
        self._jobs.pop(job_id, None)
        connection = self.rt.queue_connection

        def delete() -> None:
            for batch_no in batches:
                with contextlib.suppress(Exception):
                    Job.fetch(rq_job_id(job_id, batch_no), connection=connection,
                              serializer=SERIALIZER).delete()

        await anyio.to_thread.run_sync(delete)

    async def expire_deadlines(self, queue: str) -> int:
        """Cancels (reason `deadline`) the jobs of the queue not started by their start
        deadline; a job that started meanwhile only leaves the deadline index."""
        rt, sched = self.rt, self.sched
        ended = 0
        for job_id in await sched.due_deadlines(queue, now_ms(), DEADLINES_PER_PASS):
            job = await rt.core.job(job_id)
            if job is not None and job.state in (JobState.CREATED, JobState.UPLOADED,
                                                 JobState.QUEUED):
                with contextlib.suppress(InvalidTransition, NotFound):
                    await rt.core.cancel(job_id, job.user_id, reason="deadline",
                                         flush_delay_ms=rt.settings.flush_delay * 1000,
                                         from_states=(JobState.CREATED, JobState.UPLOADED,
                                                      JobState.QUEUED))
                    ended += 1
            if job is None or job.state != JobState.RUNNING:
                await sched.place(queue, job_id, "")
                self._jobs.pop(job_id, None)
            else:
                await sched.drop_deadline(queue, job_id)
        return ended

    async def rebuild(self) -> int:
        """Puts every waiting job back in its queue's order (`rebuild_order`)."""
        self._rebuilt = time.monotonic()
        return await rebuild_order(self.rt, self.sched)


class Beside:
    """The dispatcher's task inside the flusher process (service/flusher/loop.py)."""

    def __init__(self, dispatcher: Dispatcher, stop: asyncio.Event, once: bool) -> None:
        self.dispatcher, self.stop, self.once = dispatcher, stop, once
        self.task = None if once else asyncio.create_task(dispatcher.run(stop),
                                                          name="tollgate-dispatcher")

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        elif self.once:  # `tollgate flusher --once`: one pass after the flush
            await self.dispatcher.rebuild()
            await self.dispatcher.pass_once()
            await self.dispatcher.release()
