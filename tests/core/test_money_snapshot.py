"""Core's reads for `tollgate audit`: a user's money as one instant of Redis, and the users
Redis knows, on fakeredis, a real Redis and a cluster."""

from __future__ import annotations

from service.state.fsm import JobState
from service.state.store import Core
from tests.core.job_setup import new_job, new_user, report


async def test_money_snapshot_reads_the_user_its_jobs_and_its_waiting_entries(
        core: Core) -> None:
    user = await new_user(core, "ann", credits=100)
    await new_user(core, "bob", credits=5)  # maybe the same bucket: not in ann's snapshot
    live = await new_job(core, user, total=2, price=10, state="running")
    done = await new_job(core, user, total=1, price=7, state="running")
    await report(core, done, user, 0)
    await core.grant(user, "op-1", 3, "promo")

    snap = await core.money_snapshot(user)
    assert snap.user is not None
    assert (snap.user.available, snap.user.reserved, snap.user.spent, snap.user.granted) == (
        76, 20, 7, 103)
    assert {job.id: job.state for job in snap.jobs} == {live: JobState.RUNNING,
                                                        done: JobState.DONE}
    assert [(e.kind, e.amount) for e in snap.pending] == [
        ("grant", 100), ("hold", -20), ("hold", -7), ("release", 7), ("charge", -7),
        ("grant", 3)]
    assert sum(e.amount for e in snap.pending) == snap.user.available


async def test_money_snapshot_of_an_unknown_user_is_empty(core: Core) -> None:
    snap = await core.money_snapshot("nobody")
    assert (snap.user, snap.jobs, snap.pending) == (None, [], [])
    assert await core.user_exists("nobody") is False


async def test_known_user_ids_lists_each_user_once(core: Core) -> None:
    for user in ("ann", "bob", "carol"):
        await new_user(core, user)
    await new_job(core, "ann")  # ann's other keys (active, jobs) are not users
    assert await core.known_user_ids() == ["ann", "bob", "carol"]
    assert await core.user_exists("ann") is True
