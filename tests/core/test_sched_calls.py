"""A queue's dispatch lock (lua/sched_lock.lua): one dispatcher fills a queue at a time,
renews its own lock in one round trip, and gives it back only if it is still its own. And
the end of a hand (lua/sched_order.lua with its options): the job's new place, its claim's
end and its first dispatch wait in one call."""

from __future__ import annotations

import pytest

from service.state.sched import SchedReads
from service.state.store import Core


async def test_one_holder_at_a_time_renewed_and_given_back(core: Core) -> None:
    sched = SchedReads(core)
    lock = core.keys.sched("gpu").lock
    assert await sched.lock("gpu", "a", 60_000)
    assert not await sched.lock("gpu", "b", 60_000)  # a's
    assert await sched.lock("gpu", "a", 90_000)  # renewed: its life is the new one
    assert 60_000 < await core.runner.execute_command("PTTL", lock) <= 90_000
    await sched.unlock("gpu", "b")  # not b's to give back
    assert await core.runner.execute_command("GET", lock) == "a"
    await sched.unlock("gpu", "a")
    assert await core.runner.execute_command("EXISTS", lock) == 0
    assert await sched.lock("gpu", "b", 60_000)


async def test_a_lock_key_of_another_type_is_refused(core: Core) -> None:
    sched = SchedReads(core)
    await core.runner.execute_command("HSET", core.keys.sched("gpu").lock, "f", "v")
    with pytest.raises(Exception, match="sched_lock: wrong_type 1"):
        await sched.lock("gpu", "a", 1_000)


async def test_a_hand_ends_its_claim_and_counts_its_wait_in_one_call(core: Core) -> None:
    sched = SchedReads(core)
    keys = core.keys.sched("gpu")
    await sched.note_claim("gpu", "j1", 10_000)
    await sched.place("gpu", "j1", "5", items=8, priority="high", vtag="5",
                      end_claim=True, wait_s=0.3)
    assert await core.runner.execute_command("ZSCORE", keys.order, "j1") == 5.0
    assert await core.runner.execute_command("ZCARD", keys.claims) == 0
    waits = await sched.waits("gpu")
    counted = {field: value for field, value in waits.items() if field.startswith("high:")}
    assert float(counted.pop("high:sum")) == pytest.approx(0.3)  # fakeredis: 0.2999...
    # One count in the slot of the first bound at or over 0.3 s (the reader sums them).
    assert counted == {"high:in:0.5": "1", "high:count": "1"}
    await sched.place("gpu", "j2", "", priority="high", wait_s=1000.0)
    assert (await sched.waits("gpu"))["high:in:+Inf"] == "1"  # over every bound
    await sched.place("gpu", "j1", "", end_claim=True)  # out, no wait counted again
    assert await core.runner.execute_command("ZCARD", keys.order) == 0
    assert (await sched.waits("gpu"))["high:count"] == "2"
