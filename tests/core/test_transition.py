"""transition: created -> uploaded -> queued -> running, and nothing else."""

from __future__ import annotations

import pytest

from service.errors import BadArgument, InvalidTransition, NotFound
from service.state.codes import Code
from service.state.store import Core
from tests.core.job_setup import LEASE_MS, new_job, new_user
from tests.core.redis_state import snapshot


async def test_each_step_moves_the_job_and_its_work_index(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user)
    bucket = core.job_keys(job_id).bucket
    now = frozen_clock[0]
    assert await core.client.zscore(bucket.holds, job_id) is not None

    frozen_clock[0] += 1
    moved = await core.transition(job_id, "created", "uploaded", owner=user)
    assert (moved.code, moved.state, moved.total) == (Code.OK, "uploaded", 3)
    assert await core.client.zscore(bucket.holds, job_id) is not None

    frozen_clock[0] += 1
    assert (await core.transition(job_id, "uploaded", "queued")).state == "queued"
    assert await core.client.zscore(bucket.holds, job_id) is None
    assert await core.client.zscore(bucket.queued, job_id) == now + 2
    assert (await core.job_record(job_id))["queued_at"] == str(now + 2)

    frozen_clock[0] += 1
    started = await core.transition(job_id, "queued", "running", lease_ms=LEASE_MS)
    assert started.state == "running"
    assert await core.client.zscore(bucket.queued, job_id) is None
    assert await core.client.zscore(bucket.leases, job_id) == now + 3 + LEASE_MS
    job = await core.job_record(job_id)
    assert (job["state"], job["started_at"], job["updated_at"]) == (
        "running", str(now + 3), str(now + 3)
    )


async def test_repeating_a_step_answers_already_and_changes_nothing(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="uploaded")
    before = await snapshot(core.client, core.keys.prefix)
    assert (await core.transition(job_id, "created", "uploaded")).code is Code.ALREADY
    assert await snapshot(core.client, core.keys.prefix) == before


@pytest.mark.parametrize(
    ("state", "from_state", "to_state"),
    [("created", "uploaded", "queued"), ("created", "queued", "running"),
     ("running", "created", "uploaded"), ("queued", "created", "uploaded")],
)
async def test_a_step_from_another_state_is_refused(
    core: Core, state: str, from_state: str, to_state: str
) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state=state)
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(InvalidTransition) as refused:
        await core.transition(job_id, from_state, to_state)
    assert refused.value.extra["reply"][0] == state
    assert await snapshot(core.client, core.keys.prefix) == before


@pytest.mark.parametrize(
    ("from_state", "to_state"),
    [("created", "queued"), ("running", "done"), ("queued", "canceled"), ("uploaded", "created"),
     ("nonsense", "uploaded")],
)
async def test_a_move_outside_the_three_steps_is_a_bad_argument(
    core: Core, from_state: str, to_state: str
) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user)
    with pytest.raises(BadArgument):
        await core.transition(job_id, from_state, to_state)
    assert (await core.job_record(job_id))["state"] == "created"


async def test_a_terminal_job_never_moves_again(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="uploaded")
    await core.cancel(job_id, user, reason="user", flush_delay_ms=5_000)
    for from_state, to_state in (("uploaded", "queued"), ("created", "uploaded")):
        with pytest.raises(InvalidTransition):
            await core.transition(job_id, from_state, to_state)
    assert (await core.job_record(job_id))["state"] == "canceled"


async def test_another_owner_or_an_unknown_job_is_not_found(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user)
    with pytest.raises(NotFound):
        await core.transition(job_id, "created", "uploaded", owner="mallory")
    with pytest.raises(NotFound):
        await core.transition(core.keys.new_job_id(user), "created", "uploaded")
    with pytest.raises(NotFound):
        await core.transition("not-a-job-id", "created", "uploaded")
    assert (await core.job_record(job_id))["state"] == "created"
