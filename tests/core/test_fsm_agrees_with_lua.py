"""service.state.fsm and the Lua scripts agree: a move is allowed by some script iff it is in MOVES.

For every pair of distinct states, a fresh job is driven into the first one and every script
that can end in the second is asked to make the move, with the widest arguments it accepts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from itertools import product
from typing import get_args

from service.api.schemas import JobStatus
from service.errors import TollgateError
from service.state.codes import Code
from service.state.fsm import LIVE, MOVES, JobState
from service.state.plans import Plan
from service.state.replies import JobProgress
from service.state.store import Core
from tests.core.job_setup import FLUSH_MS, LEASE_MS, new_job, new_user, report

Attempt = Callable[[Core, str, str, JobState, JobState], Awaitable[JobProgress]]
# Every refused attempt leaves a live job behind: room for all of them.
ROOMY = Plan("roomy", rule_slots=1, concurrency=1_000)


async def into(core: Core, user: str, state: JobState, total: int) -> str:
    """A fresh job of `total` items in `state`."""
    if state in LIVE:
        return await new_job(core, user, total=total, state=state)
    job_id = await new_job(core, user, total=total, state=JobState.RUNNING)
    if state is JobState.DONE:
        for index in range(total):
            await report(core, job_id, user, index)
    elif state is JobState.FAILED:
        await core.settle(job_id, user, state, reason="x", flush_delay_ms=FLUSH_MS,
                          from_states=(JobState.RUNNING,))
    else:
        await core.cancel(job_id, user, reason="x", flush_delay_ms=FLUSH_MS)
    return job_id


async def via_transition(core: Core, job_id: str, user: str, frm: JobState, to: JobState
                         ) -> JobProgress:
    return await core.transition(job_id, frm, to, owner=user, lease_ms=LEASE_MS)


async def via_item_result(core: Core, job_id: str, user: str, frm: JobState, to: JobState
                          ) -> JobProgress:
    # A 2-item job's first report can only start it; a 1-item job's only report ends it.
    return await report(core, job_id, user, 0, ok=to is not JobState.FAILED)


async def via_settle(core: Core, job_id: str, user: str, frm: JobState, to: JobState
                     ) -> JobProgress:
    return await core.settle(job_id, user, to, reason="x", flush_delay_ms=FLUSH_MS,
                             from_states=LIVE)


async def via_cancel(core: Core, job_id: str, user: str, frm: JobState, to: JobState
                     ) -> JobProgress:
    return await core.cancel(job_id, user, reason="x", flush_delay_ms=FLUSH_MS)


# (script, item count of the job it is tried on) for each target state.
SCRIPTS: dict[JobState, list[tuple[Attempt, int]]] = {
    JobState.CREATED: [],  # only reserve makes a job, and it makes it new
    JobState.UPLOADED: [(via_transition, 1)],
    JobState.QUEUED: [(via_transition, 1)],
    JobState.RUNNING: [(via_transition, 1), (via_item_result, 2)],
    JobState.DONE: [(via_settle, 1), (via_item_result, 1)],
    JobState.FAILED: [(via_settle, 1), (via_item_result, 1)],
    JobState.CANCELED: [(via_cancel, 1)],
}


async def lua_allows(core: Core, user: str, frm: JobState, to: JobState) -> bool:
    allowed = False
    for script, total in SCRIPTS[to]:
        job_id = await into(core, user, frm, total)
        assert (await core.job_record(job_id))["state"] == frm
        try:
            progress = await script(core, job_id, user, frm, to)
        except TollgateError:
            progress = None
        state = (await core.job_record(job_id))["state"]
        moved = progress is not None and progress.code is Code.OK and state == to
        assert moved or state == frm, f"{script.__name__} left {frm}->{to} in {state}"
        allowed = allowed or moved
    return allowed


async def test_every_move_the_scripts_make_is_in_moves_and_no_other(core: Core) -> None:
    user = await new_user(core, "ann", credits=100_000, plan=ROOMY)
    disagreements = []
    for frm, to in product(JobState, JobState):
        if frm is to:
            continue
        if await lua_allows(core, user, frm, to) != (to in MOVES[frm]):
            verdict = "refuses" if to in MOVES[frm] else "allows"
            disagreements.append(f"{frm}->{to}: Lua {verdict} it")
    assert disagreements == []


def test_moves_cover_every_state_and_terminal_states_never_move() -> None:
    assert set(MOVES) == set(JobState)
    assert all(not MOVES[state] for state in JobState if state not in LIVE)


def test_the_api_status_names_exactly_the_job_states() -> None:
    assert set(get_args(JobStatus)) == set(JobState)
