"""Races on a real server: hundreds of concurrent calls over RACE_CONNECTIONS connections.
Each decision is one script, so exactly the affordable/allowed number of calls succeed."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Iterable
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from service.errors import TollgateError
from service.state.autopipeline import AutoPipeline
from service.state.codes import Code
from service.state.plans import PLANS, Plan
from service.state.replies import JobProgress
from service.state.store import Core
from tests.core.conftest import RACE_CONNECTIONS
from tests.core.job_setup import FLUSH_MS, HOLD_MS, new_job, new_user, report
from tests.core.redis_state import assert_balanced, balance, ledger, money

CALLS = 250
BULK = Plan("bulk", rule_slots=20, concurrency=100_000)


async def race(calls: Iterable[Awaitable[Any]]) -> list[Any]:
    """Runs every call at once, RACE_CONNECTIONS in flight; refusals come back as errors."""
    gate = asyncio.Semaphore(RACE_CONNECTIONS)

    async def one(call: Awaitable[Any]) -> Any:
        async with gate:
            try:
                return await call
            except TollgateError as refusal:
                return refusal

    return await asyncio.gather(*(one(call) for call in calls))


async def connections_open(core: Core) -> int:
    """This test's connections, on whichever server or cluster node holds them."""
    if isinstance(core.client, RedisCluster):
        per_node = await core.client.execute_command(
            "CLIENT LIST", target_nodes=RedisCluster.ALL_NODES
        )
        clients = [c for listed in per_node.values() for c in listed]
    else:
        clients = await core.client.client_list()
    return sum(1 for c in clients if c["name"] == core.keys.prefix)


def assert_ran_concurrently(core: Core, connections: int) -> None:
    """The race really overlapped: over many connections, or in shared pipelines."""
    if isinstance(core.runner, AutoPipeline):
        assert core.runner.commands_sent >= 2 * core.runner.batches_sent
    else:
        assert connections > RACE_CONNECTIONS // 2


def outcomes(results: list[Any]) -> Counter[str]:
    def name(result: Any) -> str:
        if isinstance(result, TollgateError):
            return result.code
        if isinstance(result, tuple):
            return str(result[0])
        return str(getattr(result, "code", result))

    return Counter(name(result) for result in results)


def reserve_call(core: Core, user: str, job_id: str, **extra: Any) -> Awaitable[Any]:
    return core.reserve(job_id=job_id, user_id=user, total=2, price=5, hold_ttl_ms=HOLD_MS,
                        meta_json="{}", **extra)


async def test_concurrent_reserves_succeed_exactly_as_often_as_credits_allow(
    race_core: Core,
) -> None:
    core = race_core
    user = await new_user(core, "ann", credits=37 * 10 + 5, plan=BULK)
    jobs = [core.keys.new_job_id(user) for _ in range(CALLS)]
    results = await race(reserve_call(core, user, job_id) for job_id in jobs)
    assert outcomes(results) == {"ok": 37, "insufficient_credits": CALLS - 37}
    assert_ran_concurrently(core, await connections_open(core))
    assert await assert_balanced(core, user, jobs) == money(5, 370, 0, 375)
    assert await core.client.scard(core.keys.user(user).active) == 37


async def test_concurrent_reserves_take_exactly_the_plans_concurrency_slots(
    race_core: Core,
) -> None:
    core = race_core
    user = await new_user(core, "ann", credits=1_000_000, plan="pro")
    jobs = [core.keys.new_job_id(user) for _ in range(CALLS)]
    results = await race(reserve_call(core, user, job_id) for job_id in jobs)
    limit = PLANS["pro"].concurrency
    assert outcomes(results) == {"ok": limit, "concurrency_limit": CALLS - limit}
    assert await core.client.scard(core.keys.user(user).active) == limit
    assert (await assert_balanced(core, user, jobs))["reserved"] == limit * 10


async def test_concurrent_reserves_under_one_idempotency_key_make_one_job(
    race_core: Core,
) -> None:
    core = race_core
    user = await new_user(core, "ann", credits=1_000_000, plan=BULK)
    jobs = [core.keys.new_job_id(user) for _ in range(CALLS)]
    results = await race(
        reserve_call(core, user, job_id, idempotency_key="k", body_hash="h") for job_id in jobs
    )
    assert outcomes(results) == {"ok": 1, "already": CALLS - 1}
    assert len({job_id for _, job_id in results}) == 1
    assert (await balance(core, user))["reserved"] == 10


@pytest.mark.parametrize("plan", ["free", "pro"])
async def test_concurrent_rule_slot_takes_fill_exactly_the_plans_slots(
    race_core: Core, plan: str
) -> None:
    core = race_core
    user = await new_user(core, "ann", plan=plan)
    results = await race(
        core.rule_slot_take(user, f"rule-{n}") for n in range(CALLS)
    )
    limit = PLANS[plan].rule_slots
    assert outcomes(results) == {"ok": limit, "rule_slots_exhausted": CALLS - limit}
    assert await core.client.scard(core.keys.user(user).rules) == limit


async def test_concurrent_takes_of_one_rule_take_one_slot(race_core: Core) -> None:
    core = race_core
    user = await new_user(core, "ann", plan="free")
    results = await race(core.rule_slot_take(user, "rule") for _ in range(CALLS))
    assert outcomes(results) == {"ok": 1, "already": CALLS - 1}
    assert await core.client.smembers(core.keys.user(user).rules) == {"rule"}


@pytest.mark.parametrize("same_key", [True, False], ids=["same-key", "new-keys"])
async def test_concurrent_reports_of_one_item_count_it_once(
    race_core: Core, same_key: bool
) -> None:
    core = race_core
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, total=3, state="queued")
    results = await race(
        report(core, job_id, user, 0, key="k" if same_key else f"k{n}") for n in range(CALLS)
    )
    assert outcomes(results) == {"ok": 1, "duplicate": CALLS - 1}
    job = await core.job_record(job_id)
    assert (job["state"], job["done"], job["failed"]) == ("running", "1", "0")
    assert await core.client.hgetall(core.job_keys(job_id).items) == {"0": "ok:out/0"}


async def test_concurrent_reports_of_every_item_finish_and_settle_the_job_once(
    race_core: Core,
) -> None:
    core = race_core
    total = 100
    user = await new_user(core, "ann", credits=10 * total)
    job_id = await new_job(core, user, total=total, price=10, state="queued")
    calls = [
        report(core, job_id, user, i, ok=i % 4 != 0, key=f"k{i}-{r}")
        for i in range(total) for r in range(2)
    ]
    results = await race(calls)
    counted = outcomes(results)
    # A repeat that lands after the job finished is refused as such; either way it counts 0.
    assert counted["ok"] == total
    assert counted["duplicate"] + counted["invalid_transition"] == total
    finals = [r for r in results if isinstance(r, JobProgress) and r.state == "done"
              and r.code is Code.OK]
    assert len(finals) == 1
    job = await core.job_record(job_id)
    assert (job["state"], job["done"], job["failed"], job["charged"]) == ("done", "75", "25", "750")
    assert await assert_balanced(core, user, [job_id]) == money(250, 0, 750, 1_000)
    kinds = [e["kind"] for e in await ledger(core, user) if e.get("job_id") == job_id]
    assert kinds == ["hold", "release", "charge"]


async def test_a_cancel_racing_the_last_items_settles_the_job_exactly_once(
    race_core: Core,
) -> None:
    core = race_core
    user = await new_user(core, "ann", credits=10_000, plan=BULK)
    jobs = [await new_job(core, user, total=4, price=10, state="running") for _ in range(20)]
    calls: list[Awaitable[Any]] = []
    for job_id in jobs:
        calls += [report(core, job_id, user, i) for i in range(4)]
        calls.append(core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS))
    await race(calls)
    await assert_balanced(core, user, jobs)
    for job_id in jobs:
        job = await core.job_record(job_id)
        assert job["state"] in ("done", "canceled")
        assert int(job["charged"]) == int(job["done"]) * 10
        entries = [e for e in await ledger(core, user) if e.get("job_id") == job_id]
        # hold -cost, release +cost, charge -charged: the job's net is what it charged.
        assert sum(e["amount"] for e in entries) == -int(job["charged"])
        assert len({e["id"] for e in entries}) == len(entries)
    assert await core.client.scard(core.keys.user(user).active) == 0


async def test_concurrent_grants_under_one_op_id_apply_once(race_core: Core) -> None:
    core = race_core
    user = await new_user(core, "ann", credits=0)
    results = await race(core.grant(user, "op", 7, "promo") for _ in range(CALLS))
    assert outcomes(results) == {"ok": 1, "already": CALLS - 1}
    assert await balance(core, user) == money(7, 0, 0, 7)


async def test_concurrent_removals_never_take_available_below_zero(race_core: Core) -> None:
    core = race_core
    user = await new_user(core, "ann", credits=100)
    results = await race(core.grant(user, f"op-{n}", -1, "chargeback") for n in range(CALLS))
    assert outcomes(results) == {"ok": 100, "insufficient_credits": CALLS - 100}
    assert await balance(core, user) == money(0, 0, 0, 0)
    assert len([e for e in await ledger(core, user) if e["kind"] == "grant"]) == 101
