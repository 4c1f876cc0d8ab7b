"""item_result: each item counts once, and the last one finishes and settles the job. (Its
refusals of a bad index and of another owner's job: tests/core/test_items_result.py, with
items_result's.)"""

from __future__ import annotations

import pytest

from service.errors import InvalidTransition
from service.state.codes import Code
from service.state.store import Core
from tests.core.job_setup import FLUSH_MS, LEASE_MS, new_job, new_user, report
from tests.core.redis_state import assert_balanced, balance, ledger, money, snapshot


async def test_first_report_of_a_queued_job_starts_it_and_counts_the_item(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="queued")
    keys = core.job_keys(job_id)
    progress = await report(core, job_id, user, 1)
    assert (progress.code, progress.state, progress.done, progress.failed) == (
        Code.OK, "running", 1, 0
    )
    job = await core.job_record(job_id)
    assert (job["state"], job["done"], job["started_at"]) == ("running", "1", str(frozen_clock[0]))
    assert await core.client.zscore(keys.bucket.queued, job_id) is None
    assert await core.client.zscore(keys.bucket.leases, job_id) == frozen_clock[0] + LEASE_MS
    assert await core.client.hgetall(keys.items) == {"1": "ok:out/1"}
    assert await core.client.lrange(keys.callbacks, 0, -1) == ["cb-1"]


async def test_each_report_of_a_running_job_pushes_the_lease_out(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="running")
    frozen_clock[0] += 1_000
    progress = await report(core, job_id, user, 0, ok=False)
    assert (progress.state, progress.done, progress.failed) == ("running", 0, 1)
    leases = core.job_keys(job_id).bucket.leases
    assert await core.client.zscore(leases, job_id) == frozen_clock[0] + LEASE_MS
    assert await core.client.hget(core.job_keys(job_id).items, "0") == "failed:boom"


async def test_the_same_callback_key_counts_once(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="running")
    await report(core, job_id, user, 0, key="k")
    before = await snapshot(core.client, core.keys.prefix)
    again = await report(core, job_id, user, 0, key="k")
    assert (again.code, again.done) == (Code.DUPLICATE, 1)
    # The key alone is enough: the same key with another index still counts nothing.
    other = await report(core, job_id, user, 2, key="k")
    assert (other.code, other.done) == (Code.DUPLICATE, 1)
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_the_same_item_under_a_new_key_counts_once(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="running")
    await report(core, job_id, user, 0, key="first")
    again = await report(core, job_id, user, 0, ok=False, key="second")
    assert (again.code, again.done, again.failed) == (Code.DUPLICATE, 1, 0)
    keys = core.job_keys(job_id)
    assert await core.client.hget(keys.items, "0") == "ok:out/0"
    # The new key is remembered, so its own retry is a duplicate by key.
    assert await core.client.lrange(keys.callbacks, 0, -1) == ["second", "first"]


async def test_callback_keys_are_capped_at_512_and_items_still_count_once(core: Core) -> None:
    user = await new_user(core, "ann", credits=10_000)
    job_id = await new_job(core, user, total=600, price=1, state="running")
    keys = core.job_keys(job_id)
    for index in range(513):
        await report(core, job_id, user, index, key=f"k{index}")
    kept = await core.client.lrange(keys.callbacks, 0, -1)
    assert len(kept) == 512
    assert kept[0] == "k512" and kept[-1] == "k1" and "k0" not in kept

    # k0 fell out of the ring; the item hash still refuses to count item 0 again.
    again = await report(core, job_id, user, 0, key="k0")
    assert (again.code, again.done) == (Code.DUPLICATE, 513)
    assert await core.client.llen(keys.callbacks) == 512
    assert (await core.job_record(job_id))["done"] == "513"


async def test_the_last_item_finishes_and_settles_the_job_in_the_same_call(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await new_job(core, user, total=3, price=10, state="running")
    await report(core, job_id, user, 0)
    await report(core, job_id, user, 2, ok=False)
    last = await report(core, job_id, user, 1)
    assert (last.code, last.state, last.done, last.failed, last.total) == (Code.OK, "done", 2, 1, 3)

    job = await core.job_record(job_id)
    assert (job["state"], job["charged"], job["refunded"], job["reason"]) == (
        "done", "20", "10", "completed"
    )
    assert job["finished_at"] == str(frozen_clock[0])
    assert await balance(core, user) == money(80, 0, 20, 100)
    user_keys, bucket = core.keys.user(user), core.job_keys(job_id).bucket
    assert await core.client.smembers(user_keys.active) == set()
    assert await core.client.zscore(bucket.leases, job_id) is None
    assert await core.client.zscore(bucket.flush, job_id) == frozen_clock[0] + FLUSH_MS
    entries = [e for e in await ledger(core, user) if e.get("job_id") == job_id]
    assert [(e["id"], e["kind"], e["amount"]) for e in entries] == [
        (f"hold:{job_id}", "hold", -30), (f"release:{job_id}", "release", 30),
        (f"charge:{job_id}", "charge", -20),
    ]
    assert sum(e["amount"] for e in await ledger(core, user)) == 80  # the balance
    assert all(e["at"] == frozen_clock[0] and e["user_id"] == user for e in entries)
    await assert_balanced(core, user, [job_id])


async def test_a_single_item_job_finishes_straight_from_queued(core: Core) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await new_job(core, user, total=1, price=7, state="queued")
    last = await report(core, job_id, user, 0)
    assert (last.state, last.done) == ("done", 1)
    assert await core.client.zscore(core.job_keys(job_id).bucket.queued, job_id) is None
    assert await balance(core, user) == money(93, 0, 7, 100)


async def test_a_job_whose_items_all_failed_ends_failed_and_is_fully_refunded(core: Core) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await new_job(core, user, total=2, price=10, state="running")
    await report(core, job_id, user, 0, ok=False)
    last = await report(core, job_id, user, 1, ok=False)
    assert (last.state, last.done, last.failed) == ("failed", 0, 2)
    job = await core.job_record(job_id)
    assert (job["state"], job["charged"], job["refunded"]) == ("failed", "0", "20")
    assert await balance(core, user) == money(100, 0, 0, 100)
    entries = [e for e in await ledger(core, user) if e.get("job_id") == job_id]
    assert [(e["kind"], e["amount"]) for e in entries] == [("hold", -20), ("release", 20)]


async def test_reports_after_the_job_finished_count_nothing(core: Core) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await new_job(core, user, total=1, price=10, state="running")
    await report(core, job_id, user, 0, key="k")
    before = await snapshot(core.client, core.keys.prefix)
    assert (await report(core, job_id, user, 0, key="k")).code is Code.DUPLICATE
    with pytest.raises(InvalidTransition):
        await report(core, job_id, user, 0, key="new")
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_reports_after_cancel_are_refused(core: Core) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await new_job(core, user, total=3, price=10, state="running")
    await report(core, job_id, user, 0, key="k0")
    await core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS)
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(InvalidTransition) as refused:
        await report(core, job_id, user, 1, key="k1")
    assert refused.value.extra["reply"][0] == "canceled"
    # A retry of a callback counted before the cancel is still just a duplicate.
    assert (await report(core, job_id, user, 0, key="k0")).code is Code.DUPLICATE
    assert await snapshot(core.client, core.keys.prefix) == before


@pytest.mark.parametrize("state", ["created", "uploaded"])
async def test_reports_before_the_job_is_queued_are_refused(core: Core, state: str) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state=state)
    with pytest.raises(InvalidTransition):
        await report(core, job_id, user, 0)
    assert await core.client.exists(core.job_keys(job_id).callbacks) == 0


