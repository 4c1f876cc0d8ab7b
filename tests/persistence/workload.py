"""A random concurrent money workload on real Redis, with a flusher running alongside.

Many asyncio clients (two per user) reserve jobs of random size and price (free ones too),
walk them forward, report items (ok, failed, repeated callbacks, a second key for a counted
item), cancel, settle, let holds and leases expire for the flusher to end, and grant or take
back credits (repeated keys too). Refusals (no credits, no slot, a job that moved on) are part
of the game. `drain` then runs the flusher until nothing is left to flush.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.errors import TollgateError
from service.flusher.bucket import FlushStats
from service.flusher.loop import flush_once
from service.history.queries import ensure_user_row
from service.settings import Settings
from service.state.plans import PLANS
from service.state.store import Core, now_ms

Sessions = async_sessionmaker[AsyncSession]
LONG_MS = 600_000
SHORT_MS = 30  # a hold or lease the flusher will find expired
START_CREDITS = 60


@dataclass
class Tally:
    """What the workload did, for the report and to prove it did something."""

    ops: int = 0
    refused: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    flushed: FlushStats = field(default_factory=FlushStats)

    def count(self, kind: str) -> None:
        self.ops += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


def settings_for(key_prefix: str, buckets: int) -> Settings:
    return Settings(key_prefix=key_prefix, buckets=buckets, flush_delay=0, flush_batch=20,
                    database_url="sqlite://")


async def _job_life(core: Core, rng: random.Random, user: str, tally: Tally) -> None:
    total, price = rng.randint(1, 4), rng.choice([0, 1, 2, 3, 5])
    job_id = core.keys.new_job_id(user)
    short_hold = rng.random() < 0.15
    await core.reserve(job_id=job_id, user_id=user, total=total, price=price,
                       hold_ttl_ms=SHORT_MS if short_hold else LONG_MS,
                       meta_json=json.dumps([{"name": f"{i}.png"} for i in range(total)]))
    tally.count("reserve")
    if short_hold or rng.random() < 0.1:  # left to expire, or live at the end
        return
    if rng.random() < 0.1:
        await core.cancel(job_id, user, reason="user", flush_delay_ms=0)
        tally.count("cancel")
        return
    short_lease = rng.random() < 0.15
    lease = SHORT_MS if short_lease else LONG_MS
    await core.transition(job_id, "created", "uploaded", owner=user)
    await core.transition(job_id, "uploaded", "queued", owner=user)
    await core.transition(job_id, "queued", "running", owner=user, lease_ms=lease)
    tally.count("start")
    if short_lease:
        return  # the worker died: the lease runs out
    for index in rng.sample(range(total), total):
        ok = rng.random() < 0.75
        keys = [f"{job_id}:item:{index}"] * (2 if rng.random() < 0.2 else 1)
        if rng.random() < 0.1:
            keys.append(f"retry-{index}")  # a second key for an item already counted
        for key in keys:
            await core.item_result(job_id, user, callback_key=key, index=index, ok=ok,
                                   detail=f"out/{index}" if ok else "boom", lease_ms=lease,
                                   flush_delay_ms=0)
            tally.count("item")
        await asyncio.sleep(0)
        if rng.random() < 0.08:
            await core.cancel(job_id, user, reason="user", flush_delay_ms=0)
            tally.count("cancel")
        elif rng.random() < 0.04:
            await core.settle(job_id, user, "failed", reason="worker gave up", flush_delay_ms=0)
            tally.count("settle")


async def _client(core: Core, rng: random.Random, user: str, ops: int, tally: Tally) -> None:
    for _ in range(ops):
        try:
            if rng.random() < 0.15:
                key = f"grant-{rng.randint(0, 6)}"  # a repeated key applies once
                await core.grant(user, key, rng.choice([5, 10, 25, -5, -20]), "workload")
                tally.count("grant")
            else:
                await _job_life(core, rng, user, tally)
        except TollgateError:
            tally.refused += 1  # no credits, no slot, the job moved on, a removal refused


async def run_workload(core: Core, sessions: Sessions, settings: Settings, seed: int, *,
                       users: int, ops_per_client: int, clients_per_user: int = 2
                       ) -> tuple[list[str], Tally]:
    """The users and what was done; a flusher pass runs every few ms meanwhile."""
    rng = random.Random(seed)
    user_ids = [f"u{seed % 1000}-{n}" for n in range(users)]
    async with sessions() as session, session.begin():  # SQL first, as provisioning does
        for user in user_ids:
            await ensure_user_row(session, user, "pro")
    for user in user_ids:
        await core.ensure_user(user, PLANS["pro"], START_CREDITS)
    tally = Tally()
    stop = asyncio.Event()

    async def flusher() -> None:
        while not stop.is_set():
            tally.flushed.add(await flush_once(core, sessions, settings, claim_ms=1))
            await asyncio.sleep(0.005)

    running = asyncio.create_task(flusher())
    try:
        await asyncio.gather(*(
            _client(core, random.Random(rng.random()), user, ops_per_client, tally)
            for user in user_ids for _ in range(clients_per_user)))
    finally:
        stop.set()
        await running
    return user_ids, tally


async def drain(core: Core, sessions: Sessions, settings: Settings, tally: Tally) -> None:
    """Flusher passes until every expiry happened and nothing waits to be flushed."""
    await asyncio.sleep(SHORT_MS / 1000 * 2)
    for _ in range(200):
        tally.flushed.add(await flush_once(core, sessions, settings, claim_ms=1))
        if not await waiting_work(core, settings):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the flusher never drained: {await waiting_work(core, settings)}")


async def waiting_work(core: Core, settings: Settings) -> dict[str, Any]:
    """Work the flusher still has: ledger entries, due flushes, expired holds or leases."""
    waiting: dict[str, Any] = {}
    for bucket in range(settings.buckets):
        keys = core.keys.bucket(bucket)
        ledger = await core.client.llen(keys.ledger)
        flush = await core.client.zcard(keys.flush)
        # A hold or lease that ran out (the short ones; a long one is far ahead).
        soon = now_ms() + LONG_MS // 2
        expired = sum([await core.client.zcount(index, "-inf", soon)
                       for index in (keys.holds, keys.leases)])
        if ledger or flush or expired:
            waiting[str(bucket)] = {"ledger": ledger, "flush": flush, "expired": expired}
    return waiting
