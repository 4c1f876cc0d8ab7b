"""A job's states and the moves between them, as the Lua scripts allow them.

created -> uploaded -> queued -> running is `transition.lua` (plus `item_result.lua`, whose
first report moves a queued job to running); any live job may be canceled (`cancel.lua`);
only a queued or running job ends as done or failed (`settle.lua`, or the last
`item_result`). A terminal job never moves again.
tests/core/test_fsm_agrees_with_lua.py drives every pair through the scripts to hold the two
in agreement.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class JobState(StrEnum):
    CREATED = "created"
    UPLOADED = "uploaded"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


LIVE: tuple[JobState, ...] = (
    JobState.CREATED, JobState.UPLOADED, JobState.QUEUED, JobState.RUNNING,
)
TERMINAL: tuple[JobState, ...] = (JobState.DONE, JobState.FAILED, JobState.CANCELED)

_ENDS = frozenset(TERMINAL)
MOVES: Mapping[JobState, frozenset[JobState]] = MappingProxyType({
    JobState.CREATED: frozenset({JobState.UPLOADED, JobState.CANCELED}),
    JobState.UPLOADED: frozenset({JobState.QUEUED, JobState.CANCELED}),
    JobState.QUEUED: _ENDS | {JobState.RUNNING},
    JobState.RUNNING: _ENDS,
    **{state: frozenset() for state in TERMINAL},
})

