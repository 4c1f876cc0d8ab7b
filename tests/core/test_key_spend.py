"""A key's spend counter in reserve.lua and finish_job: counted with the hold, refused past
the cap with nothing written, given back at settle within the period, reset by a new one."""

from __future__ import annotations

import pytest

from service.errors import KeySpendCapExceeded
from service.state.apikeys import DAY_MS, KeySpend, period_number, period_start
from service.state.codes import Code
from service.state.store import Core
from tests.core.job_setup import HOLD_MS, new_user
from tests.core.redis_state import snapshot

DAY = 20_000 * DAY_MS  # a UTC midnight


async def reserve(core: Core, user: str, total: int, key: KeySpend, at_ms: int) -> str:
    job_id = core.keys.new_job_id(user)
    code, _ = await core.reserve(job_id=job_id, user_id=user, total=total, price=2,
                                 hold_ttl_ms=HOLD_MS, meta_json="{}", key=key, at_ms=at_ms)
    assert code is Code.OK
    return job_id


async def spent(core: Core, user: str, key_id: str) -> tuple[str, str]:
    spends = await core.key_spends(user)
    return spends.get(f"{key_id}:p", ""), spends.get(f"{key_id}:s", "")


async def test_the_cap_counts_holds_refuses_past_it_and_takes_back_refunds(core: Core) -> None:
    user = await new_user(core, "kay", credits=1_000)
    key = KeySpend("k1", cap=10, period="day")
    first = await reserve(core, user, 3, key, DAY + 5)  # 6 of 10
    assert await spent(core, user, "k1") == (str(DAY // DAY_MS), "6")
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(KeySpendCapExceeded):
        await reserve(core, user, 3, key, DAY + 6)  # 12 > 10: nothing written
    assert await snapshot(core.client, core.keys.prefix) == before
    await reserve(core, user, 2, key, DAY + 7)  # exactly 10
    await core.cancel(first, user, reason="user", flush_delay_ms=1_000)
    assert (await spent(core, user, "k1"))[1] == "4"  # the 6 released came back
    assert (await core.job_record(first))["key_id"] == "k1"


async def test_a_new_period_starts_at_zero_and_an_old_refund_leaves_it_alone(
        core: Core) -> None:
    user = await new_user(core, "kai", credits=1_000)
    key = KeySpend("k2", cap=10, period="day")
    yesterday = await reserve(core, user, 5, key, DAY - 1)  # 10: yesterday's cap is full
    await reserve(core, user, 5, key, DAY)  # a new day: 10 again
    await core.cancel(yesterday, user, reason="user", flush_delay_ms=1_000)
    assert await spent(core, user, "k2") == (str(DAY // DAY_MS), "10")


def test_periods_are_utc_days_and_months() -> None:
    assert period_number("day", DAY) == period_number("day", DAY + DAY_MS - 1) == DAY // DAY_MS
    march = period_number("month", 1_709_251_200_000)  # 2024-03-01T00:00:00Z
    assert period_number("month", 1_709_251_199_999) == march - 1
    assert period_start("month", march).isoformat() == "2024-03-01T00:00:00+00:00"
    assert period_start("day", DAY // DAY_MS).timestamp() * 1000 == DAY
