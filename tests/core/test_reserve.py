"""reserve: one job, its hold and its concurrency slot in one step, or a refusal code."""

from __future__ import annotations

from typing import Any

import pytest

from service.errors import (
    BadArgument,
    ConcurrencyLimit,
    IdempotencyKeyReused,
    InsufficientCredits,
    NotFound,
)
from service.state.codes import Code
from service.state.plans import PLANS
from service.state.store import Core
from tests.core.job_setup import HOLD_MS, new_job, new_user
from tests.core.redis_state import assert_balanced, balance, money, snapshot


async def reserve(
    core: Core, user_id: str, job_id: str | None = None, **extra: Any
) -> tuple[Code, str]:
    args: dict[str, Any] = {"total": 4, "price": 5, "hold_ttl_ms": HOLD_MS, "meta_json": "{}"}
    args.update(extra)
    job_id = job_id or core.keys.new_job_id(user_id)
    return await core.reserve(job_id=job_id, user_id=user_id, **args)


async def test_reserve_holds_credits_takes_a_slot_and_records_the_job(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = core.keys.new_job_id(user)
    code, answered = await reserve(core, user, job_id, meta_json='{"items": [1]}', rule_id="r9")
    assert (code, answered) == (Code.OK, job_id)

    assert await balance(core, user) == money(80, 20, 0, 100)
    job = await core.job_record(job_id)
    assert job["state"] == "created"
    assert (job["owner"], job["total"], job["price"], job["cost"]) == (user, "4", "5", "20")
    assert (job["done"], job["failed"], job["rule_id"]) == ("0", "0", "r9")
    keys = core.job_keys(job_id)
    user_keys = core.keys.user(user)
    assert await core.client.get(keys.meta) == '{"items": [1]}'
    assert await core.client.smembers(user_keys.active) == {job_id}
    assert await core.client.zscore(user_keys.jobs, job_id) == frozen_clock[0]
    assert await core.client.zscore(keys.bucket.holds, job_id) == frozen_clock[0] + HOLD_MS
    await assert_balanced(core, user, [job_id])


async def test_reserve_again_with_the_same_job_id_answers_already_and_changes_nothing(
    core: Core,
) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = core.keys.new_job_id(user)
    await reserve(core, user, job_id)
    before = await snapshot(core.client, core.keys.prefix)
    assert await reserve(core, user, job_id) == (Code.ALREADY, job_id)
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_idempotency_key_with_the_same_body_returns_the_first_job(core: Core) -> None:
    user = await new_user(core, "ann", credits=100)
    first = core.keys.new_job_id(user)
    await reserve(core, user, first, idempotency_key="k1", body_hash="h1")
    record = core.keys.user(user).idempotency("k1")
    assert await core.client.hgetall(record) == {"job_id": first, "body_hash": "h1"}
    assert await core.client.pttl(record) > 0

    second = core.keys.new_job_id(user)
    assert await reserve(core, user, second, idempotency_key="k1", body_hash="h1") == (
        Code.ALREADY, first
    )
    assert await core.job_record(second) == {}
    assert (await balance(core, user))["reserved"] == 20


async def test_idempotency_key_with_another_body_is_refused(core: Core) -> None:
    user = await new_user(core, "ann", credits=100)
    first = core.keys.new_job_id(user)
    await reserve(core, user, first, idempotency_key="k1", body_hash="h1")
    with pytest.raises(IdempotencyKeyReused) as refused:
        await reserve(core, user, idempotency_key="k1", body_hash="h2")
    assert refused.value.extra["reply"] == [first]
    assert (await balance(core, user))["reserved"] == 20


async def test_reserve_for_an_unknown_user_is_not_found(core: Core) -> None:
    with pytest.raises(NotFound):
        await reserve(core, "nobody")
    assert await snapshot(core.client, core.keys.prefix) == {}


async def test_reserve_beyond_the_available_credits_is_refused(core: Core) -> None:
    user = await new_user(core, "ann", credits=39)
    await reserve(core, user, total=4, price=5)
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(InsufficientCredits) as refused:
        await reserve(core, user, total=4, price=5)
    assert refused.value.extra["reply"] == [19, 20]
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_reserve_costing_exactly_the_balance_succeeds(core: Core) -> None:
    user = await new_user(core, "ann", credits=20)
    assert (await reserve(core, user, total=4, price=5))[0] is Code.OK
    assert await balance(core, user) == money(0, 20, 0, 20)


async def test_reserve_beyond_the_plan_concurrency_is_refused(core: Core) -> None:
    user = await new_user(core, "ann", credits=1_000, plan="free")
    await reserve(core, user)
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(ConcurrencyLimit) as refused:
        await reserve(core, user)
    assert refused.value.extra["reply"] == [1, PLANS["free"].concurrency]
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_pro_plan_allows_ten_active_jobs(core: Core) -> None:
    user = await new_user(core, "ann", credits=1_000, plan="pro")
    for _ in range(10):
        await reserve(core, user, total=1, price=1)
    with pytest.raises(ConcurrencyLimit):
        await reserve(core, user, total=1, price=1)


async def test_a_finished_job_frees_its_concurrency_slot(core: Core) -> None:
    user = await new_user(core, "ann", credits=1_000, plan="free")
    job_id = await new_job(core, user)
    await core.cancel(job_id, user, reason="user", flush_delay_ms=5_000)
    assert (await reserve(core, user))[0] is Code.OK


@pytest.mark.parametrize(
    ("total", "price", "what"),
    [(0, 5, "total"), (-1, 5, "total"), (1.5, 2, "total"), (2, -1, "price"), (3, 1.5, "price")],
)
async def test_reserve_with_a_bad_number_is_refused_before_any_write(
    core: Core, total: object, price: object, what: str
) -> None:
    user = await new_user(core, "ann", credits=100)
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(BadArgument) as refused:
        await reserve(core, user, total=total, price=price)
    assert refused.value.extra["reply"] == [what]
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_zero_price_job_reserves_nothing_but_a_slot(core: Core) -> None:
    user = await new_user(core, "ann", credits=0, plan="free")
    assert (await reserve(core, user, price=0))[0] is Code.OK
    assert await balance(core, user) == money(0, 0, 0, 0)
    with pytest.raises(ConcurrencyLimit):
        await reserve(core, user, price=0)


async def test_a_job_id_from_another_bucket_is_refused(core: Core) -> None:
    """Later calls find a job by the bucket in its id; a stray id would strand its hold."""
    user = await new_user(core, "ann", credits=100)
    other = next(f"u{n}" for n in range(100)
                 if core.keys.bucket_of_user(f"u{n}") != core.keys.bucket_of_user(user))
    before = await snapshot(core.client, core.keys.prefix)
    for job_id in (core.keys.new_job_id(other), "not-a-job-id"):
        with pytest.raises(BadArgument):
            await reserve(core, user, job_id)
    assert await snapshot(core.client, core.keys.prefix) == before
