"""ensure_user, grant and set_plan: provisioning and admin operations, idempotent by op id."""

from __future__ import annotations

import pytest

from service.errors import BadArgument, ConcurrencyLimit, InsufficientCredits, NotFound
from service.state.codes import Code
from service.state.plans import PLANS, Plan
from service.state.store import Core, op_digest
from service.state.users import grant_id
from tests.core.job_setup import new_job, new_user
from tests.core.redis_state import assert_balanced, balance, ledger, money, snapshot


async def test_ensure_user_provisions_once_with_plan_limits_and_a_signup_grant(
    core: Core, frozen_clock: list[int]
) -> None:
    assert await core.ensure_user("ann", PLANS["pro"], 50) is True
    record = await core.user_record("ann")
    assert record == {
        "plan": "pro", "available": "50", "reserved": "0", "spent": "0", "granted": "50",
        "max_active": "10", "max_rules": "20", "created_at": str(frozen_clock[0]),
    }
    assert await ledger(core, "ann") == [{
        "id": "signup:ann", "user_id": "ann", "kind": "grant", "amount": 50,
        "reason": "signup", "at": frozen_clock[0], "grant_id": grant_id("ann", "signup"),
        "grant_kind": "promotional",
    }]
    before = await snapshot(core.client, core.keys.prefix)
    assert await core.ensure_user("ann", PLANS["free"], 999) is False
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_ensure_user_without_credits_writes_no_ledger_entry(core: Core) -> None:
    assert await core.ensure_user("ann", PLANS["free"], 0) is True
    assert await ledger(core, "ann") == []


@pytest.mark.parametrize("credits", [-1, 2.5])
async def test_ensure_user_refuses_bad_credits(core: Core, credits: int) -> None:
    with pytest.raises(BadArgument):
        await core.ensure_user("ann", PLANS["free"], credits)
    assert await snapshot(core.client, core.keys.prefix) == {}


async def test_grant_adds_credits_and_a_ledger_entry(core: Core, frozen_clock: list[int]) -> None:
    user = await new_user(core, "ann", credits=10)
    granted = await core.grant(user, "op-1", 25, "promo")
    assert granted == type(granted)(Code.OK, 35, 0, 0, 35)
    assert await balance(core, user) == money(35, 0, 0, 35)
    op = op_digest("op-1")
    assert await core.client.hgetall(core.keys.user(user).ops) == {f"grant:{op}": "25"}
    assert (await ledger(core, user))[-1] == {
        "id": f"grant:ann:{op}", "user_id": user, "kind": "grant", "amount": 25,
        "reason": "promo", "at": frozen_clock[0], "grant_id": grant_id(user, op),
        "grant_kind": "paid",
    }


async def test_a_negative_grant_removes_credits(core: Core) -> None:
    user = await new_user(core, "ann", credits=40)
    job_id = await new_job(core, user, total=1, price=10)
    taken = await core.grant(user, "op-1", -30, "chargeback")
    assert (taken.code, taken.available, taken.reserved, taken.granted) == (Code.OK, 0, 10, 10)
    assert (await ledger(core, user))[-1]["amount"] == -30
    await assert_balanced(core, user, [job_id])


async def test_a_negative_grant_below_zero_available_is_refused(core: Core) -> None:
    user = await new_user(core, "ann", credits=40)
    await new_job(core, user, total=1, price=10)
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(InsufficientCredits) as refused:
        await core.grant(user, "op-1", -31, "chargeback")
    assert refused.value.extra["reply"] == ["30", "10", "0", "40"]
    assert await snapshot(core.client, core.keys.prefix) == before
    # The refused op id was not consumed: a corrected retry under it goes through.
    assert (await core.grant(user, "op-1", -30, "chargeback")).available == 0


async def test_a_repeated_grant_op_id_changes_nothing(core: Core) -> None:
    user = await new_user(core, "ann", credits=10)
    await core.grant(user, "op-1", 25, "promo")
    before = await snapshot(core.client, core.keys.prefix)
    again = await core.grant(user, "op-1", 25, "promo")
    assert again == type(again)(Code.ALREADY, 35, 0, 0, 35)
    # The op id alone decides: another amount under the same id is still the same op.
    assert (await core.grant(user, "op-1", 1_000, "other")).code is Code.ALREADY
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_grant_to_an_unknown_user_is_not_found(core: Core) -> None:
    with pytest.raises(NotFound):
        await core.grant("nobody", "op-1", 5, "promo")
    assert await snapshot(core.client, core.keys.prefix) == {}


@pytest.mark.parametrize("amount", [1.5, "ten"])
async def test_grant_refuses_a_non_integer_amount(core: Core, amount: object) -> None:
    user = await new_user(core, "ann", credits=10)
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(BadArgument):
        await core.grant(user, "op-1", amount, "promo")  # type: ignore[arg-type]
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_set_plan_changes_the_limits_once_per_op_id(core: Core) -> None:
    user = await new_user(core, "ann", plan="free")
    assert await core.set_plan(user, "op-1", PLANS["pro"]) is Code.OK
    record = await core.user_record(user)
    assert (record["plan"], record["max_active"], record["max_rules"]) == ("pro", "10", "20")
    assert await core.client.hget(core.keys.user(user).ops, f"plan:{op_digest('op-1')}") == "pro"

    before = await snapshot(core.client, core.keys.prefix)
    # A retry of op-1 must not undo a later change, whatever plan it carries.
    assert await core.set_plan(user, "op-1", PLANS["free"]) is Code.ALREADY
    assert await snapshot(core.client, core.keys.prefix) == before
    assert await core.set_plan(user, "op-2", PLANS["free"]) is Code.OK
    assert (await core.user_record(user))["max_active"] == "1"


async def test_set_plan_for_an_unknown_user_is_not_found(core: Core) -> None:
    with pytest.raises(NotFound):
        await core.set_plan("nobody", "op-1", PLANS["pro"])
    assert await snapshot(core.client, core.keys.prefix) == {}


async def test_set_plan_refuses_non_numeric_limits(core: Core) -> None:
    user = await new_user(core, "ann", plan="free")
    with pytest.raises(BadArgument):
        await core.set_plan(user, "op-1", Plan("odd", rule_slots="many", concurrency=3))  # type: ignore[arg-type]
    assert (await core.user_record(user))["plan"] == "free"


async def test_a_lower_concurrency_limit_keeps_running_jobs_but_refuses_new_ones(
    core: Core,
) -> None:
    user = await new_user(core, "ann", plan="pro")
    jobs = [await new_job(core, user, total=1, price=1) for _ in range(3)]
    await core.set_plan(user, "downgrade", PLANS["free"])
    assert await core.client.scard(core.keys.user(user).active) == 3
    with pytest.raises(ConcurrencyLimit):
        await new_job(core, user, total=1, price=1)
    for job_id in jobs:
        await core.cancel(job_id, user, reason="user", flush_delay_ms=5_000)
    await new_job(core, user, total=1, price=1)


async def test_the_longest_grant_ledger_id_fits_its_column(core: Core) -> None:
    from service.history.models import LedgerEntry

    user = "u" * 128  # the longest user id the API allows
    await core.ensure_user(user, PLANS["free"], 0)
    await core.grant(user, "k" * 200, 5, "promo")  # the longest Idempotency-Key
    entry = (await ledger(core, user))[-1]
    assert entry["id"] == f"grant:{user}:{op_digest('k' * 200)}"
    assert len(entry["id"]) <= LedgerEntry.__table__.c.id.type.length  # type: ignore[attr-defined]


async def test_restore_user_rebuilds_a_balance_without_a_ledger_entry(core: Core) -> None:
    assert await core.restore_user("ann", PLANS["pro"], available=30, spent=20,
                                   granted=50) is True
    assert await balance(core, "ann") == money(30, 0, 20, 50)
    assert (await core.user_record("ann"))["plan"] == "pro"
    assert await ledger(core, "ann") == []
    # Never over a record Redis has.
    assert await core.restore_user("ann", PLANS["free"], available=0, spent=0,
                                   granted=0) is False
    assert await balance(core, "ann") == money(30, 0, 20, 50)
    with pytest.raises(BadArgument):  # granted must be available + spent
        await core.restore_user("bob", PLANS["free"], available=1, spent=1, granted=1)
