"""rule_slot_take / rule_slot_release: idempotent by rule id, bounded by the plan."""

from __future__ import annotations

import pytest

from service.errors import NotFound, RuleSlotsExhausted
from service.state.codes import Code
from service.state.plans import PLANS
from service.state.store import Core
from tests.core.job_setup import new_user
from tests.core.redis_state import snapshot


@pytest.mark.parametrize("plan", ["free", "pro"])
async def test_a_plan_gives_exactly_its_rule_slots(core: Core, plan: str) -> None:
    user = await new_user(core, "ann", plan=plan)
    limit = PLANS[plan].rule_slots
    for taken in range(1, limit + 1):
        slot = await core.rule_slot_take(user, f"rule-{taken}")
        assert (slot.code, slot.used, slot.limit) == (Code.OK, taken, limit)
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(RuleSlotsExhausted) as refused:
        await core.rule_slot_take(user, "one-too-many")
    assert refused.value.extra["reply"] == [limit, limit]
    assert await snapshot(core.client, core.keys.prefix) == before
    assert await core.client.scard(core.keys.user(user).rules) == limit


async def test_taking_the_same_rule_again_answers_already(core: Core) -> None:
    user = await new_user(core, "ann", plan="free")
    await core.rule_slot_take(user, "r1")
    await core.rule_slot_take(user, "r2")
    # Even with every slot taken, the rule that holds one is told it has it.
    again = await core.rule_slot_take(user, "r1")
    assert (again.code, again.used, again.limit) == (Code.ALREADY, 2, 2)


async def test_release_frees_the_slot_for_another_rule(core: Core) -> None:
    user = await new_user(core, "ann", plan="free")
    await core.rule_slot_take(user, "r1")
    await core.rule_slot_take(user, "r2")
    assert await core.rule_slot_release(user, "r1") is Code.OK
    assert await core.client.smembers(core.keys.user(user).rules) == {"r2"}
    assert (await core.rule_slot_take(user, "r3")).code is Code.OK


async def test_releasing_a_rule_without_a_slot_answers_already(core: Core) -> None:
    user = await new_user(core, "ann", plan="free")
    await core.rule_slot_take(user, "r1")
    await core.rule_slot_release(user, "r1")
    before = await snapshot(core.client, core.keys.prefix)
    assert await core.rule_slot_release(user, "r1") is Code.ALREADY
    assert await core.rule_slot_release(user, "never-taken") is Code.ALREADY
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_an_unknown_user_has_no_slots(core: Core) -> None:
    with pytest.raises(NotFound):
        await core.rule_slot_take("nobody", "r1")
    assert await snapshot(core.client, core.keys.prefix) == {}


async def test_a_lower_plan_keeps_existing_rules_but_refuses_new_ones(core: Core) -> None:
    user = await new_user(core, "ann", plan="pro")
    for n in range(5):
        await core.rule_slot_take(user, f"r{n}")
    await core.set_plan(user, "downgrade", PLANS["free"])
    assert await core.client.scard(core.keys.user(user).rules) == 5
    with pytest.raises(RuleSlotsExhausted):
        await core.rule_slot_take(user, "r-new")
    for n in range(4):
        await core.rule_slot_release(user, f"r{n}")
    assert (await core.rule_slot_take(user, "r-new")).code is Code.OK
    with pytest.raises(RuleSlotsExhausted):
        await core.rule_slot_take(user, "r-newer")
