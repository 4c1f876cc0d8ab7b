"""items_result: a batch's reports in one call, each item counted exactly once, as by
item_result; on fakeredis, the real Redis and a Redis Cluster (the `core` fixture)."""

from __future__ import annotations

import pytest

from service.errors import BadArgument, InvalidTransition, NotFound
from service.state.codes import Code
from service.state.replies import BatchProgress, ItemReport
from service.state.store import Core
from tests.core.job_setup import FLUSH_MS, LEASE_MS, new_job, new_user, report
from tests.core.redis_state import assert_balanced, balance, ledger, money, snapshot


def entry(index: int, ok: bool = True, key: str | None = None) -> ItemReport:
    return ItemReport(key or f"cb-{index}", index, ok, f"out/{index}" if ok else "boom")


async def report_batch(core: Core, job_id: str, owner: str, entries: list[ItemReport]
                       ) -> BatchProgress:
    return await core.items_result(job_id, owner, entries, lease_ms=LEASE_MS,
                                   flush_delay_ms=FLUSH_MS)


async def ring(core: Core, job_id: str) -> tuple[list[str], set[str]]:
    keys = core.job_keys(job_id)
    listed = await core.client.lrange(keys.callbacks, 0, -1)
    return listed, await core.client.smembers(keys.callback_set)


async def test_a_batch_counts_every_item_and_starts_the_job_in_one_call(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, total=4, state="queued")
    progress = await report_batch(core, job_id, user, [entry(0), entry(2, ok=False), entry(3)])
    assert progress == BatchProgress(Code.OK, "running", 2, 1, 4, 3, 0)
    keys = core.job_keys(job_id)
    job = await core.job_record(job_id)
    assert (job["state"], job["done"], job["failed"], job["started_at"]) == (
        "running", "2", "1", str(frozen_clock[0]))
    assert await core.client.hgetall(keys.items) == {
        "0": "ok:out/0", "2": "failed:boom", "3": "ok:out/3"}
    assert await core.client.zscore(keys.bucket.queued, job_id) is None
    assert await core.client.zscore(keys.bucket.leases, job_id) == frozen_clock[0] + LEASE_MS
    assert await ring(core, job_id) == (["cb-3", "cb-2", "cb-0"], {"cb-0", "cb-2", "cb-3"})


async def test_the_same_batch_again_counts_nothing_and_writes_nothing(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, total=4, state="running")
    batch = [entry(0), entry(1, ok=False)]
    await report_batch(core, job_id, user, batch)
    before = await snapshot(core.client, core.keys.prefix)
    again = await report_batch(core, job_id, user, batch)
    assert again == BatchProgress(Code.DUPLICATE, "running", 1, 1, 4, 0, 2)
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_a_mixed_batch_counts_only_what_is_new(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, total=6, state="running")
    await report(core, job_id, user, 0, key="single-0")  # one item reported the old way
    progress = await report_batch(core, job_id, user, [
        entry(0, key="single-0"),          # the same key again: known by the ring
        entry(1, ok=False, key="x-1"),     # new
        entry(0, ok=False, key="fresh-0"), # item 0 under a new key: known by the items hash
        entry(2, key="x-2"),               # new
        entry(2, key="x-2"),               # the same entry twice in one batch
        entry(3, key="x-3b"), entry(3, ok=False, key="x-3c"),  # one item, two new keys
    ])
    assert (progress.code, progress.counted, progress.duplicates) == (Code.OK, 3, 4)
    assert (progress.done, progress.failed) == (3, 1)
    items = await core.client.hgetall(core.job_keys(job_id).items)
    assert items == {"0": "ok:out/0", "1": "failed:boom", "2": "ok:out/2", "3": "ok:out/3"}
    listed, members = await ring(core, job_id)
    assert listed == ["x-3c", "x-3b", "x-2", "fresh-0", "x-1", "single-0"]
    assert members == set(listed)
    # A key first seen in a batch is a duplicate for item_result too.
    assert (await report(core, job_id, user, 4, key="x-3c")).code is Code.DUPLICATE


async def test_the_batch_that_completes_the_job_settles_it_in_the_same_call(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await new_job(core, user, total=4, price=10, state="running")
    await report(core, job_id, user, 0)
    last = await report_batch(core, job_id, user, [entry(1), entry(2, ok=False), entry(3),
                                                   entry(0, key="late-0")])
    assert last == BatchProgress(Code.OK, "done", 3, 1, 4, 3, 1)
    job = await core.job_record(job_id)
    assert (job["state"], job["charged"], job["refunded"], job["reason"]) == (
        "done", "30", "10", "completed")
    assert await balance(core, user) == money(70, 0, 30, 100)
    bucket = core.job_keys(job_id).bucket
    assert await core.client.smembers(core.keys.user(user).active) == set()
    assert await core.client.zscore(bucket.leases, job_id) is None
    assert await core.client.zscore(bucket.flush, job_id) == frozen_clock[0] + FLUSH_MS
    kinds = [(e["kind"], e["amount"]) for e in await ledger(core, user)
             if e.get("job_id") == job_id]
    assert kinds == [("hold", -40), ("release", 40), ("charge", -30)]
    await assert_balanced(core, user, [job_id])


async def test_a_batch_of_failures_only_fails_the_job_and_refunds_it(core: Core) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await new_job(core, user, total=2, price=10, state="queued")
    last = await report_batch(core, job_id, user, [entry(0, ok=False), entry(1, ok=False)])
    assert (last.state, last.done, last.failed) == ("failed", 0, 2)
    assert await balance(core, user) == money(100, 0, 0, 100)


async def test_after_the_job_ended_known_keys_are_duplicates_and_new_ones_refused(
    core: Core
) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await new_job(core, user, total=3, price=10, state="running")
    await report_batch(core, job_id, user, [entry(0)])
    await core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS)
    before = await snapshot(core.client, core.keys.prefix)
    known = await report_batch(core, job_id, user, [entry(0)])
    assert (known.code, known.state, known.counted, known.duplicates) == (
        Code.DUPLICATE, "canceled", 0, 1)
    with pytest.raises(InvalidTransition) as refused:
        await report_batch(core, job_id, user, [entry(0), entry(1)])
    assert refused.value.extra["reply"][0] == "canceled"
    assert await snapshot(core.client, core.keys.prefix) == before


async def report_via(batch: bool, core: Core, job_id: str, owner: str, index: int) -> object:
    """Item `index` reported through item_result, or through items_result in a batch between
    the good reports of items 0 and 1."""
    if not batch:
        return await report(core, job_id, owner, index)
    return await report_batch(core, job_id, owner, [entry(0), entry(index), entry(1)])


BOTH = pytest.mark.parametrize("batch", [False, True], ids=["item_result", "items_result"])


@BOTH
@pytest.mark.parametrize("index", [-1, 3, 99])
async def test_an_index_out_of_range_refuses_the_report_before_any_write(
    core: Core, index: int, batch: bool
) -> None:
    """A batch is refused whole, its good entries too (its job queued: nor does it start)."""
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, total=3, state="queued" if batch else "running")
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(BadArgument):
        await report_via(batch, core, job_id, user, index)
    assert await snapshot(core.client, core.keys.prefix) == before


@BOTH
async def test_a_report_for_another_owner_or_an_unknown_job_is_not_found(
    core: Core, batch: bool
) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="running")
    with pytest.raises(NotFound):
        await report_via(batch, core, job_id, "mallory", 2)
    with pytest.raises(NotFound):
        await report_via(batch, core, core.keys.new_job_id(user), user, 2)
    assert (await core.job_record(job_id))["done"] == "0"


async def test_the_ring_keeps_512_keys_and_its_set_stays_in_step(core: Core) -> None:
    user = await new_user(core, "ann", credits=10_000)
    job_id = await new_job(core, user, total=1000, price=1, state="running")
    first = await report_batch(core, job_id, user, [entry(i) for i in range(600)])
    assert (first.counted, first.state) == (600, "running")
    for index in range(600, 610):  # single reports share the ring
        await report(core, job_id, user, index)
    listed, members = await ring(core, job_id)
    assert len(listed) == 512 and members == set(listed)
    assert listed[0] == "cb-609" and listed[-1] == "cb-98" and "cb-97" not in members
    # cb-0 left the ring; the items hash still counts item 0 once.
    again = await report_batch(core, job_id, user, [entry(0)])
    assert (again.code, again.counted, again.duplicates) == (Code.DUPLICATE, 0, 1)
    last = await report_batch(core, job_id, user, [entry(i) for i in range(610, 1000)])
    assert (last.state, last.done, last.counted) == ("done", 1000, 390)
    listed, members = await ring(core, job_id)
    assert len(listed) == 512 and members == set(listed)
    await assert_balanced(core, user, [job_id])


async def test_more_than_1000_entries_are_refused(core: Core) -> None:
    user = await new_user(core, "ann", credits=10_000)
    job_id = await new_job(core, user, total=1001, price=1, state="running")
    with pytest.raises(BadArgument):
        await report_batch(core, job_id, user, [entry(i) for i in range(1001)])
