"""The flusher loop (`tollgate flusher`): visits the buckets with due work and finishes the work
no request will do.

What it does in each bucket (expire holds and leases, requeue, flush to SQL, and why a
crash between any two steps loses nothing) is service.flusher.bucket.

Which buckets: the due index (service/state/due.py), so an idle pass costs the same for 64
or 16,384 buckets (16 small scripts, one per index shard). Core marks a bucket after each
script that leaves due work there (`ZADD LT` on its shard; a bucket's own script cannot,
the shards live in other hash slots). A pass takes the due buckets (each moved to a
placeholder score), visits them, and settles each to the next due time read from its keys
after the visit; a write that lands during the visit lowers the score, and the settle keeps
the lower one. The marks are a second call after the script, so a crash between the two
loses one: the safety net (`reindex_buckets`) reads the next due time of every bucket in
use (`tg:buckets`: Core adds a bucket after each script that provisions, funds or reserves
there) about every SAFETY_NET_CYCLE_S, a share a pass (SafetyNet), and of every bucket on the
flusher's first pass, and lowers the index to it; the same net rebuilds `tg:buckets` from the
keys that exist (a wipe empties it). A saturated bucket (a heavy user's
backlog) is taken again at once, up to MAX_ROUNDS rounds a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from sqlalchemy import text

from service.errors import NotFound
from service.flusher.bucket import CLAIM_MS, FlushStats, Requeue, Sessions, flush_buckets
from service.flusher.dispatcher import Dispatcher
from service.flusher.lost_users import rebuild_lost_users
from service.flusher.retention import expire_kept_inputs, expire_results
from service.flusher.webhooks import WebhookSender
from service.history.deliveries import expire_deliveries
from service.history.engine import make_engine, make_session_factory
from service.jobs.deliveries import sender_client
from service.jobs.dispatch import requeue as requeue_job
from service.jobs.views import webhook_job_view
from service.runtime import make_core, open_runtime
from service.settings import Settings
from service.state.clients import state_redis
from service.state.due import DueIndex, new_placeholder
from service.state.outbox import Outbox
from service.state.store import Core
from service.storage import Storage

log = logging.getLogger("tollgate.flusher")

# Rounds of flush_batch a bucket may take in one pass while it comes back saturated.
MAX_ROUNDS = 25
# Buckets whose rows share one SQL transaction: at most GROUP_BUCKETS x TOLLGATE_FLUSH_BATCH
# finished jobs (and three ledger rows each) a transaction.
GROUP_BUCKETS = 64
# The due index's safety net runs this often (and on a flusher's first pass).
SAFETY_NET_CYCLE_S = 60.0

Reindex = Literal["in_use", "all"]


async def reindex_buckets(core: Core, settings: Settings,
                          which: Reindex | Sequence[int]) -> int:
    """The due index's safety net (see the module docstring): "in_use" reads the buckets
    in use, "all" every bucket (a flusher's first pass), or the buckets given (one share of
    the rolling net). "all" and a share also rebuild the set of buckets in use from the
    keys that exist, so a wiped Redis hides no bucket for longer than one cycle; a share
    then re-reads the due time of the buckets found in use only. Returns the buckets with
    work."""
    due = DueIndex(core)
    buckets: Sequence[int]
    if which == "in_use":
        buckets = await due.buckets_in_use()
    elif which == "all":
        buckets = range(settings.buckets)
        await due.found_in_use(buckets)
    else:
        buckets = await due.found_in_use(which)
    return await due.reindex(buckets, settings.requeue_after * 1000)


class SafetyNet:
    """The rolling safety net of the flusher loop: every bucket on the first pass, then every
    bucket again, a share a pass, so that each is re-read about every SAFETY_NET_CYCLE_S and no
    pass pays for all of them at once (16,384 buckets take seconds). A bucket with no keys
    costs one EXISTS a cycle."""

    def __init__(self, core: Core, settings: Settings, *, watch_loss: bool = False) -> None:
        """`watch_loss`: a missing loss sentinel (a node lost data: its due marks too) makes
        the next share every bucket (the loop's `rebuild` sets the sentinels again)."""
        self.core = core
        self.watch_loss = watch_loss
        self.buckets = settings.buckets
        self.interval = settings.flusher_interval
        self.first = True
        self.pending: list[int] = []
        self.share = max(1, math.ceil(self.buckets * self.interval / SAFETY_NET_CYCLE_S))

    async def next_share(self) -> Reindex | list[int] | None:
        if self.first:
            return "all"
        if self.watch_loss and await DueIndex(self.core).missing_sentinels():
            log.warning("a loss sentinel is missing (a Redis node lost its data): every "
                        "bucket's due time is read again")
            return "all"
        if not self.pending:  # a new cycle
            self.pending = list(range(self.buckets))
        share, self.pending = self.pending[:self.share], self.pending[self.share:]
        return share

    def done(self) -> None:
        self.first = False


async def flush_once(
    core: Core,
    session_factory: Sessions,
    settings: Settings,
    *,
    requeue: Requeue | None = None,
    claim_ms: int = CLAIM_MS,
    storage: Storage | None = None,
    reindex: Reindex | Sequence[int] | None = None,
    housekeeping: bool = True,
) -> FlushStats:
    """One pass over the buckets the due index names; with `reindex`, the safety net runs
    first. `housekeeping`: also expire results, kept inputs and delivery logs (SQL).

    The buckets go GROUP_BUCKETS at a time (flush_buckets): visited BUCKETS_IN_FLIGHT at a
    time, the rows of the whole group written in one SQL transaction, then each visit
    finished. A bucket that comes back saturated is taken again at once, up to MAX_ROUNDS
    rounds (the saturated ones of a round together), so one heavy user's backlog drains
    within the pass. Each bucket's next due time is read after its last visit and settled
    into the index, after an error too.

    Safe to run in several processes at once. A bucket that fails does not stop the
    others (cancelling one mid-transaction could leave a SQLite write lock behind); the
    first error is raised after the pass, and the failed bucket's work is redone later.
    """
    stats = FlushStats()
    due = DueIndex(core)
    requeue_after_ms = settings.requeue_after * 1000
    if reindex:
        await reindex_buckets(core, settings, reindex)
    placeholder = new_placeholder()
    pending = await due.take(placeholder, limit=settings.buckets)
    errors: list[BaseException] = []

    async def settle(buckets: list[int]) -> None:
        """The work left (after an error too) decides each bucket's next visit."""
        async def one(bucket: int) -> None:
            await due.settle(bucket, placeholder, await due.next_due(bucket, requeue_after_ms))

        outcomes = await asyncio.gather(*(one(bucket) for bucket in buckets),
                                        return_exceptions=True)
        errors.extend(outcome for outcome in outcomes if isinstance(outcome, BaseException))

    for _ in range(MAX_ROUNDS):
        again: list[int] = []
        for start in range(0, len(pending), GROUP_BUCKETS):
            group = pending[start:start + GROUP_BUCKETS]
            outcomes = await flush_buckets(core, session_factory, settings, group,
                                           requeue=requeue, claim_ms=claim_ms, storage=storage)
            done = []
            for bucket, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    errors.append(outcome)
                    done.append(bucket)
                    continue
                saturated, outcome.saturated = outcome.saturated, False
                stats.add(outcome)
                (again if saturated else done).append(bucket)
            await settle(done)
        pending = again
        if not pending:
            break
    else:  # more waits: the next pass comes without a pause
        stats.saturated = True
        await settle(pending)
    if errors:
        raise errors[0]
    if storage is not None and housekeeping:  # the inputs of flushed jobs went already
        stats.results_expired = await expire_results(session_factory, storage,
                                                     settings.result_ttl)
        await expire_kept_inputs(session_factory, storage, settings.retry_window)
        async with session_factory() as session, session.begin():
            await expire_deliveries(session)
    if stats:
        log.info("flusher pass: %s", stats)
    return stats


def _stop_on_signals(stop: asyncio.Event) -> list[signal.Signals]:
    """SIGTERM/SIGINT end the loop after the current pass; returns the signals taken over."""
    loop = asyncio.get_running_loop()
    taken = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Outside the main thread (e.g. inside `tollgate dev`) the caller stops us instead.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            taken.append(sig)
    return taken


async def run_flusher(
    settings: Settings,
    *,
    once: bool,
    requeue: Requeue | None = None,
    stop: asyncio.Event | None = None,
    webhooks: WebhookSender | None = None,
    storage: Storage | None = None,
    rebuild: Callable[[Sequence[int]], Awaitable[int]] | None = None,
) -> FlushStats:
    """The flusher loop with its own Redis client and SQL engine; returns the totals.
    `webhooks` delivers in a loop of its own beside it (one pass after the flush if once).
    `rebuild` runs on each share of the safety net: users Redis lost who make no request
    (service/flusher/lost_users.py)."""
    client = state_redis(settings)
    core = make_core(client, settings)  # its gathered scripts share pipelines
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    stop = stop or asyncio.Event()
    signals = _stop_on_signals(stop)
    totals = FlushStats()
    # One write per line (print writes the text and its newline apart: another thread's log
    # line could land between them on an unbuffered console).
    print(f"flusher: {settings.buckets} buckets, every {settings.flusher_interval}s"
          + (" (one pass)" if once else "") + "\n", end="", flush=True)
    delivering = None if webhooks is None or once else asyncio.create_task(
        webhooks.run(stop, settings.flusher_interval), name="tollgate-webhooks")
    net = SafetyNet(core, settings, watch_loss=rebuild is not None)
    housekept = -math.inf
    try:
        while not stop.is_set():
            try:
                share = await net.next_share()
                if share is not None:
                    began = time.perf_counter()
                    await reindex_buckets(core, settings, share)
                    if rebuild is not None:
                        await rebuild(share if isinstance(share, list)
                                      else range(settings.buckets))
                    if net.first:  # start-up: the net, and SQL's first connection opened
                        async with engine.connect() as connection:
                            await connection.execute(text("SELECT 1"))
                        # The start-up's cost, apart from the work (bench.end_to_end).
                        log.info("safety net: every bucket read in %.3fs",
                                 time.perf_counter() - began)
                net.done()
                # Passes run back to back while work waits (a saturated pass); SQL's
                # housekeeping comes at most once an interval all the same.
                began = time.monotonic()
                housekeeping = began - housekept >= settings.flusher_interval
                stats = await flush_once(core, sessions, settings, requeue=requeue,
                                         storage=storage, housekeeping=housekeeping)
                if housekeeping:
                    housekept = began
            except Exception:
                if once:
                    raise
                # Redis or SQL away for a moment: every step is redoable, so try again.
                log.exception("flusher pass failed; retrying in %ss", settings.flusher_interval)
                stats = FlushStats()
            totals.add(stats)  # a pass that did something is logged by flush_once
            if once:
                if webhooks is not None:
                    await webhooks.deliver_once()
                break
            if not stats.saturated:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=settings.flusher_interval)
    finally:
        stop.set()
        if delivering is not None:
            await delivering
        for sig in signals:
            asyncio.get_running_loop().remove_signal_handler(sig)
        await engine.dispose()
        await client.aclose()
    print(f"flusher: stopped; total {totals}\n", end="", flush=True)
    return totals


async def run_flusher_with_requeue(settings: Settings, *, once: bool,
                                   stop: asyncio.Event | None = None) -> None:
    """The flusher with the API's own re-enqueue: a queued job nobody started needs fresh
    presigned URLs and its callback token, so this opens a Runtime for it; it delivers
    webhooks too, their `data` the job view (service.jobs.views)."""
    if not settings.jwt_secret:
        raise SystemExit("TOLLGATE_JWT_SECRET is not set (re-enqueued jobs need callback tokens)")
    rt = await open_runtime(settings, settings.jwt_secret)

    async def requeue(job_id: str) -> None:
        await requeue_job(rt, job_id)

    async def render(owner: str, job_id: str) -> dict[str, Any] | None:
        try:
            return await webhook_job_view(rt, owner, job_id)
        except NotFound:
            return None

    webhooks = WebhookSender(Outbox(rt.core), settings, render, sender_client(settings))
    stop = stop or asyncio.Event()
    dispatching = Dispatcher(rt).beside(stop, once=once)  # service/flusher/dispatcher.py
    try:
        await run_flusher(settings, once=once, requeue=requeue, webhooks=webhooks,
                          storage=rt.storage, stop=stop,
                          rebuild=lambda buckets: rebuild_lost_users(rt, buckets))
    finally:
        await dispatching.close()
        await webhooks.client.aclose()
        await rt.close()


async def run_dispatcher(settings: Settings) -> None:
    """`tollgate dispatcher`: the dispatcher alone, until SIGTERM or SIGINT (the flusher
    runs one too; one fills each queue at a time)."""
    if not settings.jwt_secret:
        raise SystemExit("TOLLGATE_JWT_SECRET is not set (batches carry callback tokens)")
    rt = await open_runtime(settings, settings.jwt_secret)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("dispatcher: running\n", end="", flush=True)
    try:
        await Dispatcher(rt).run(stop)
    finally:
        await rt.close()
    print("dispatcher: stopped\n", end="", flush=True)
