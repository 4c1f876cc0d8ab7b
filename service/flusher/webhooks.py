"""Webhook delivery from the outbox, in the flusher: many deliveries at once.

`WebhookSender` claims due deliveries per bucket and POSTs them concurrently (a global cap
and one per endpoint, so a hanging receiver holds only its own slots); each attempt is
service.jobs.deliveries's, which records its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from service.errors import NotFound, WebhookUrlNotAllowed
from service.jobs.deliveries import WebhookPoster
from service.jobs.webhooks import RESOLVE_TIMEOUT_S, split_url
from service.state.due import DueIndex
from service.state.store import now_ms

log = logging.getLogger("tollgate.flusher")
T = TypeVar("T")

# Deliveries one process holds (in flight, or claimed and waiting for their endpoint), at
# most PER_ENDPOINT attempts in flight to one host:port, and Redis calls in flight from
# the sender (below any pool: a full pool fails on Cluster and the embedded server).
MAX_IN_FLIGHT = 64
PER_ENDPOINT = 4
REDIS_IN_FLIGHT = 16
CLAIM_LIMIT = 200
MIN_WAIT_S = 0.1  # the least a delivery put back for a full endpoint waits
MIN_PASS_S = 0.05  # passes that claim something come at most this often
REMEMBERED_IDS = 10_000


@dataclass
class _Endpoint:
    """One receiver (host:port): its attempts in flight, the claimed deliveries waiting
    for one of its slots, and how long its attempts take (a moving average)."""
    active: int = 0
    waiting: deque[tuple[str, dict[str, Any]]] = field(default_factory=deque)
    latency_s: float = 0.1


def endpoint_of(url: str) -> str:
    try:
        _, host, port = split_url(url)
    except WebhookUrlNotAllowed:
        return url  # refused at its attempt; its own slot all the same
    return f"{host.lower()}:{port}"


@dataclass
class WebhookSender(WebhookPoster):
    """Delivers concurrently across buckets. A pass claims each bucket's due deliveries,
    never more than the free slots (`max_in_flight`, deliveries held by this process), and
    starts each at once when its endpoint has fewer than `per_endpoint` attempts in flight;
    otherwise it waits behind that endpoint (at most `per_endpoint` of them, so its claim
    covers the wait: `claim_ms`), or goes back to the due set for a moment. So a hanging
    receiver holds only its own slots, and nobody waits for a pass over every bucket. Every
    Redis call goes through one gate of `redis_in_flight`."""
    max_in_flight: int = MAX_IN_FLIGHT
    per_endpoint: int = PER_ENDPOINT
    redis_in_flight: int = REDIS_IN_FLIGHT
    _endpoints: dict[str, _Endpoint] = field(default_factory=dict, init=False, repr=False)
    # delivery id -> endpoint, so a delivery claimed again while its endpoint is full goes
    # back without its record being read
    _endpoint_ids: OrderedDict[str, str] = field(default_factory=OrderedDict, init=False,
                                                 repr=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)
    _held: int = field(default=0, init=False, repr=False)
    _attempted: int = field(default=0, init=False, repr=False)
    _passes: int = field(default=0, init=False, repr=False)
    _next_due: float | None = field(default=None, init=False, repr=False)
    _freed: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _gate: asyncio.Semaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._gate = asyncio.Semaphore(self.redis_in_flight)

    @property
    def claim_ms(self) -> int:
        # One attempt (resolve, then POST) takes at most `attempt_s`; a claimed delivery
        # waits for at most one attempt of each of its endpoint's slots, then makes its own:
        # a live sender never sees its claim run out.
        attempt_s = self.settings.webhook_timeout + RESOLVE_TIMEOUT_S
        return int(2 * attempt_s * 1000) + 10_000

    @property
    def held(self) -> int:
        """Deliveries this process holds: in flight or waiting for their endpoint."""
        return self._held

    async def _redis(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._gate:
            return await call()

    def _release(self, n: int = 1) -> None:
        self._held -= n
        self._freed.set()

    async def _free_slots(self) -> int:
        while self._held >= self.max_in_flight:
            self._freed.clear()
            await self._freed.wait()
        return self.max_in_flight - self._held

    async def deliver_bucket(self, bucket: int, limit: int = CLAIM_LIMIT) -> int:
        """Claims up to `limit` of the bucket's due deliveries (never more than the free
        slots) and starts them; returns how many it claimed. Does not wait for them."""
        want = min(limit, await self._free_slots())
        self._held += want  # taken before the claim, so a second pass cannot overclaim
        try:
            ids: list[str] = await self._redis(lambda: self.outbox.claim(
                bucket, limit=want, claim_ms=self.claim_ms))
        except BaseException:
            self._release(want)
            raise
        self._release(want - len(ids))
        if ids:
            await self._dispatch(bucket, ids)
        return len(ids)

    async def _dispatch(self, bucket: int, ids: list[str]) -> None:
        back: list[tuple[str, float]] = []
        unread: list[str] = []
        for delivery_id in ids:
            known = self._endpoints.get(self._endpoint_ids.get(delivery_id, ""))
            if known is not None and self._full(known):
                back.append((delivery_id, self._wait_s(known)))
            else:
                unread.append(delivery_id)
        raws = await asyncio.gather(
            *(self._redis(functools.partial(self.outbox.record, i)) for i in unread),
            return_exceptions=True)
        for delivery_id, raw in zip(unread, raws, strict=True):
            if isinstance(raw, BaseException):  # its claim runs out: due again then
                log.warning("webhook %s: record not read (%s)", delivery_id, raw)
                self._release()
                continue
            if raw is None:  # the log expired or was never written: drop the due entry
                self._release()
                with contextlib.suppress(NotFound):
                    await self._redis(functools.partial(
                        self.outbox.result, delivery_id, "gave_up", attempts_seen=0,
                        status=None, log_ttl_ms=1))
                continue
            record: dict[str, Any] = json.loads(raw)
            if record.get("delivered_at") or record.get("gave_up_at"):
                self._release()
                continue
            key = endpoint_of(str(record["url"]))
            self._remember(delivery_id, key)
            endpoint = self._endpoints.setdefault(key, _Endpoint())
            if endpoint.active < self.per_endpoint:
                endpoint.active += 1
                task = asyncio.create_task(self._deliver(key, endpoint, delivery_id, record),
                                           name=f"webhook {delivery_id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif len(endpoint.waiting) < self.per_endpoint:
                endpoint.waiting.append((delivery_id, record))
            else:
                back.append((delivery_id, self._wait_s(endpoint)))
        if back:
            self._release(len(back))
            await self._put_back(bucket, back)

    def _full(self, endpoint: _Endpoint) -> bool:
        return (endpoint.active >= self.per_endpoint
                and len(endpoint.waiting) >= self.per_endpoint)

    def _wait_s(self, endpoint: _Endpoint) -> float:
        """About when the endpoint has a slot for one more: its queue over its slots, times
        how long its attempts take (a hanging one: its timeout)."""
        queued = endpoint.active + len(endpoint.waiting)
        estimate = queued / self.per_endpoint * endpoint.latency_s
        return min(max(estimate, MIN_WAIT_S), self.settings.webhook_timeout)

    def _remember(self, delivery_id: str, key: str) -> None:
        self._endpoint_ids[delivery_id] = key
        self._endpoint_ids.move_to_end(delivery_id)
        while len(self._endpoint_ids) > REMEMBERED_IDS:
            self._endpoint_ids.popitem(last=False)

    async def _put_back(self, bucket: int, back: list[tuple[str, float]]) -> None:
        """Deliveries whose endpoint is full go back to the due set, due when it may have a
        slot (XX: one that was recorded meanwhile is not added again)."""
        now = now_ms()
        due_ms = [(now + int(wait_s * 1000), delivery_id) for delivery_id, wait_s in back]
        await self._redis(lambda: self.outbox.put_back(bucket, due_ms))
        due = asyncio.get_running_loop().time() + min(wait_s for _, wait_s in back)
        self._next_due = due if self._next_due is None else min(self._next_due, due)

    async def _deliver(self, key: str, endpoint: _Endpoint, delivery_id: str,
                       record: dict[str, Any]) -> None:
        """One of the endpoint's slots: attempts the delivery, then each that waits for
        the endpoint, until none is left."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                began = loop.time()
                try:
                    if await self.attempt(delivery_id, record):
                        self._attempted += 1
                except Exception:  # one broken delivery never stops the others
                    log.exception("webhook delivery %s failed", delivery_id)
                endpoint.latency_s = 0.7 * endpoint.latency_s + 0.3 * (loop.time() - began)
                self._release()
                if not endpoint.waiting:
                    break
                delivery_id, record = endpoint.waiting.popleft()
        except BaseException:  # cancelled mid-attempt (shutdown): their claims run out
            self._release(1 + len(endpoint.waiting))
            endpoint.waiting.clear()
            raise
        finally:
            endpoint.active -= 1
            if not endpoint.active and not endpoint.waiting:
                self._endpoints.pop(key, None)

    async def _pass(self) -> int:
        """Claims from every bucket in use (a delivery exists only where a user does, so an
        idle pass costs what the users cost, not TOLLGATE_BUCKETS), starting one bucket
        further each pass; returns how many it claimed. A bucket that fails does not stop
        the others; the first failure is raised after them."""
        buckets = await self._redis(DueIndex(self.outbox.core).buckets_in_use)
        if not buckets:
            return 0
        start = self._passes % len(buckets)
        self._passes += 1
        claimed, failure = 0, None
        for bucket in buckets[start:] + buckets[:start]:
            try:
                claimed += await self.deliver_bucket(bucket)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return claimed

    async def drain(self, grace_s: float | None = None) -> None:
        """Waits for every delivery this process holds; past `grace_s`, cancels them."""
        while self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            if pending and grace_s is not None:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return

    async def deliver_once(self) -> int:
        """One pass, then waits for its deliveries; returns how many attempts were
        recorded."""
        before = self._attempted
        try:
            await self._pass()
        finally:
            await self.drain()
        return self._attempted - before

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        """Delivers until `stop` is set; its own loop, so a hanging receiver never holds up
        the flush of finished jobs. A pass never waits for deliveries; the next comes at
        once when this one claimed some (at most every MIN_PASS_S), else after `interval`
        or when a delivery put back is due."""
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                began = loop.time()
                self._next_due = None
                try:
                    claimed = await self._pass()
                except Exception:  # Redis away for a moment: every step is redoable
                    log.exception("webhook pass failed")
                    claimed = 0
                pause = MIN_PASS_S if claimed else interval
                if self._next_due is not None:
                    pause = min(pause, self._next_due - loop.time())
                pause -= loop.time() - began
                if pause > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=pause)
        finally:
            await self.drain(grace_s=self.settings.webhook_timeout + 1)
