"""settle (done/failed) and cancel: charge what succeeded, refund the rest, free the slot."""

from __future__ import annotations

from typing import Any

import pytest

from service.errors import BadArgument, InvalidTransition, NotFound
from service.state.codes import Code
from service.state.replies import JobProgress
from service.state.store import Core
from tests.core.job_setup import FLUSH_MS, new_job, new_user, report
from tests.core.redis_state import assert_balanced, balance, ledger, money, snapshot


async def settle(
    core: Core, job_id: str, owner: str, to: str = "failed", **extra: Any
) -> JobProgress:
    return await core.settle(job_id, owner, to, reason="lease expired", flush_delay_ms=FLUSH_MS,
                             **extra)


async def cancel(core: Core, job_id: str, owner: str, **extra: Any) -> JobProgress:
    return await core.cancel(job_id, owner, reason="user", flush_delay_ms=FLUSH_MS, **extra)


async def assert_finished(core: Core, job_id: str, owner: str, now: int) -> None:
    user_keys, bucket = core.keys.user(owner), core.job_keys(job_id).bucket
    assert not await core.client.sismember(user_keys.active, job_id)
    for index in (bucket.holds, bucket.leases, bucket.queued):
        assert await core.client.zscore(index, job_id) is None
    assert await core.client.zscore(bucket.flush, job_id) == now + FLUSH_MS
    await assert_balanced(core, owner, [job_id])


async def test_settle_failed_charges_succeeded_items_and_refunds_the_rest(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await new_job(core, user, total=4, price=10, state="running")
    await report(core, job_id, user, 0)
    await report(core, job_id, user, 1, ok=False)
    settled = await settle(core, job_id, user, "failed")
    assert (settled.code, settled.state, settled.done, settled.failed) == (Code.OK, "failed", 1, 1)
    assert (settled.charged, settled.refunded) == (10, 30)
    job = await core.job_record(job_id)
    assert (job["state"], job["reason"], job["charged"], job["refunded"]) == (
        "failed", "lease expired", "10", "30"
    )
    assert await balance(core, user) == money(90, 0, 10, 100)
    await assert_finished(core, job_id, user, frozen_clock[0])
    entries = [e for e in await ledger(core, user) if e.get("job_id") == job_id]
    assert [(e["kind"], e["amount"]) for e in entries] == [
        ("hold", -40), ("release", 40), ("charge", -10)]
    assert sum(e["amount"] for e in await ledger(core, user)) == 90  # the balance


async def test_settle_a_queued_job_that_never_started(core: Core, frozen_clock: list[int]) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await new_job(core, user, total=2, price=10, state="queued")
    settled = await core.settle(job_id, user, "failed", reason="gave up", flush_delay_ms=FLUSH_MS)
    assert (settled.state, settled.charged, settled.refunded) == ("failed", 0, 20)
    await assert_finished(core, job_id, user, frozen_clock[0])


async def test_settle_done_charges_the_done_items(core: Core) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await new_job(core, user, total=2, price=10, state="running")
    await report(core, job_id, user, 0)
    settled = await core.settle(job_id, user, "done", reason="ok", flush_delay_ms=FLUSH_MS)
    assert (settled.state, settled.charged, settled.refunded) == ("done", 10, 10)


async def test_settle_again_answers_already_and_changes_nothing(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="running")
    await settle(core, job_id, user)
    before = await snapshot(core.client, core.keys.prefix)
    again = await core.settle(job_id, user, "failed", reason="again", flush_delay_ms=FLUSH_MS)
    assert (again.code, again.state) == (Code.ALREADY, "failed")
    assert (again.charged, again.refunded) == (0, 30)
    assert await snapshot(core.client, core.keys.prefix) == before


@pytest.mark.parametrize("state", ["created", "uploaded"])
async def test_settle_from_a_state_not_allowed_is_refused(core: Core, state: str) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state=state)
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(InvalidTransition):
        await settle(core, job_id, user)
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_settle_with_an_explicit_from_state_list(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="queued")
    with pytest.raises(InvalidTransition):  # queued is not in the list
        await core.settle(job_id, user, "failed", from_states=("running",), reason="x",
                          flush_delay_ms=FLUSH_MS)
    settled = await core.settle(job_id, user, "failed", from_states=("queued",), reason="x",
                                flush_delay_ms=FLUSH_MS)
    assert settled.state == "failed"


async def test_a_job_not_yet_queued_never_ends_done_or_failed(core: Core) -> None:
    """Even when the caller's list names it: before the workers have it, a job is canceled."""
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="uploaded")
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(InvalidTransition):
        await core.settle(job_id, user, "failed", from_states=("uploaded",), reason="x",
                          flush_delay_ms=FLUSH_MS)
    assert await snapshot(core.client, core.keys.prefix) == before


@pytest.mark.parametrize("terminal", ["done", "canceled"])
async def test_a_terminal_job_is_never_settled_into_another_end(core: Core, terminal: str) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, total=1, state="running")
    if terminal == "done":
        await report(core, job_id, user, 0)
    else:
        await cancel(core, job_id, user)
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(InvalidTransition) as refused:
        await settle(core, job_id, user, "failed")
    assert refused.value.extra["reply"][0] == terminal
    assert await snapshot(core.client, core.keys.prefix) == before


@pytest.mark.parametrize(
    ("to", "from_states"),
    [("canceled", ("queued",)), ("running", ("queued",)), ("failed", ("running", "done"))],
)
async def test_settle_with_a_bad_target_or_terminal_from_state_is_a_bad_argument(
    core: Core, to: str, from_states: tuple[str, ...]
) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="running")
    with pytest.raises(BadArgument):
        await settle(core, job_id, user, to, from_states=from_states)
    assert (await core.job_record(job_id))["state"] == "running"


async def test_settle_for_another_owner_is_not_found(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="running")
    with pytest.raises(NotFound):
        await settle(core, job_id, "mallory")
    with pytest.raises(NotFound):
        await cancel(core, job_id, "mallory")
    assert (await core.job_record(job_id))["state"] == "running"


@pytest.mark.parametrize("state", ["created", "uploaded", "queued", "running"])
async def test_cancel_refunds_an_unused_job_in_full(
    core: Core, frozen_clock: list[int], state: str
) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await new_job(core, user, total=3, price=10, state=state)
    canceled = await core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS)
    assert (canceled.code, canceled.state, canceled.charged, canceled.refunded) == (
        Code.OK, "canceled", 0, 30
    )
    assert await balance(core, user) == money(100, 0, 0, 100)
    await assert_finished(core, job_id, user, frozen_clock[0])
    entries = [e for e in await ledger(core, user) if e.get("job_id") == job_id]
    assert [(e["id"], e["kind"], e["amount"]) for e in entries] == [
        (f"hold:{job_id}", "hold", -30), (f"release:{job_id}", "release", 30)
    ]


async def test_cancel_charges_what_succeeded_and_refunds_the_rest(core: Core) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await new_job(core, user, total=4, price=10, state="running")
    await report(core, job_id, user, 0)
    await report(core, job_id, user, 1)
    await report(core, job_id, user, 2, ok=False)
    canceled = await core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS)
    assert (canceled.done, canceled.failed, canceled.charged, canceled.refunded) == (2, 1, 20, 20)
    assert await balance(core, user) == money(80, 0, 20, 100)


async def test_cancel_again_answers_already_and_changes_nothing(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user)
    await cancel(core, job_id, user)
    before = await snapshot(core.client, core.keys.prefix)
    again = await core.cancel(job_id, user, reason="again", flush_delay_ms=FLUSH_MS)
    assert (again.code, again.state, again.refunded) == (Code.ALREADY, "canceled", 30)
    assert await snapshot(core.client, core.keys.prefix) == before


@pytest.mark.parametrize("terminal", ["done", "failed"])
async def test_cancel_of_a_finished_job_is_refused(core: Core, terminal: str) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, total=1, state="running")
    await report(core, job_id, user, 0, ok=terminal == "done")
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(InvalidTransition):
        await cancel(core, job_id, user)
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_cancel_limited_to_some_from_states(core: Core) -> None:
    """The flusher cancels expired holds only while the job is still created/uploaded."""
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="queued")
    with pytest.raises(InvalidTransition):
        await cancel(core, job_id, user, from_states=("created", "uploaded"))
    assert (await core.job_record(job_id))["state"] == "queued"
    other = await new_job(core, user, state="uploaded")
    canceled = await cancel(core, other, user, from_states=("created", "uploaded"))
    assert canceled.state == "canceled"


async def test_a_free_job_settles_and_cancels(core: Core) -> None:
    """Price 0: every credit movement is zero and must still be accepted by HINCRBY."""
    user = await new_user(core, "ann", credits=0)
    first = await new_job(core, user, total=2, price=0, state="running")
    await report(core, first, user, 0)
    done = await report(core, first, user, 1)
    assert done.state == "done"
    second = await new_job(core, user, total=2, price=0)
    assert (await cancel(core, second, user)).state == "canceled"
    third = await new_job(core, user, total=2, price=0, state="running")
    assert (await settle(core, third, user)).state == "failed"
    assert await balance(core, user) == money(0, 0, 0, 0)
    assert [e for e in await ledger(core, user) if "job_id" in e] == []
