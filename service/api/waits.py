"""`Prefer: wait=N` (RFC 7240) on POST /jobs/{id}/execute and GET /jobs/{id}: the answer
waits until the job is final or N seconds (1-60) pass, then shows the view either way.

A waiting request costs Redis nothing per tick of its own: it sleeps on the process's one
ChangeWatch (service.api.live), which reads the change counters of every watched job in one
round trip per tick and wakes a request only when its job changed; the request then reads
the view once. A wait holds one of its user's stream slots (service.api.streams, shared with
the SSE streams); with none free, the answer comes at once, without Preference-Applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Annotated, Any

from litestar.params import HeaderParameter

from service.api import live, streams
from service.errors import TooManyStreams
from service.jobs.views import get_job
from service.runtime import Runtime
from service.state.fsm import TERMINAL
from service.state.outbox import Outbox
from service.state.streams import give_back_stream_slot

MAX_WAIT_S = 60
# Any text: a preference the server cannot read is ignored (RFC 7240), never refused.
PreferHeader = Annotated[str | None, HeaderParameter(name="Prefer")]
_WAIT = re.compile(r"^\s*wait\s*=\s*\"?(\d{1,9})\"?\s*$", re.IGNORECASE)


def wanted_wait(prefer: str | None) -> int | None:
    """The seconds of a `wait=N` preference (more than MAX_WAIT_S: MAX_WAIT_S); None when
    there is none, or it is not a positive whole number (a preference is ignored then)."""
    for preference in (prefer or "").split(","):
        match = _WAIT.match(preference.split(";", 1)[0])
        if match and int(match[1]) >= 1:
            return min(int(match[1]), MAX_WAIT_S)
    return None


async def until_final(rt: Runtime, state: Any, user_id: str, job_id: str, seconds: int
                      ) -> tuple[dict[str, Any], dict[str, str]]:
    """The job's view once it is final or `seconds` passed, and the answer's headers."""
    try:
        slot = await streams.take_slot(rt, user_id)
    except TooManyStreams:  # the user holds every slot: no wait, the view now
        return await get_job(rt, user_id, job_id), {}
    try:
        return await _wait(rt, live.change_watch(state, rt), user_id, job_id,
                           seconds), {"Preference-Applied": f"wait={seconds}"}
    finally:
        with contextlib.suppress(Exception):  # its lease ends it otherwise
            await asyncio.shield(give_back_stream_slot(rt.core, user_id, slot))


async def _wait(rt: Runtime, watch: live.ChangeWatch, user_id: str, job_id: str,
                seconds: int) -> dict[str, Any]:
    # The counter is read before the view: any change after it wakes the wait.
    [seen] = await Outbox(rt.core).seqs([job_id])
    view = await get_job(rt, user_id, job_id)
    if view["status"] in TERMINAL or seen is None:  # final, or flushed (final) already
        return view
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with watch.watch(job_id, seen) as changed:
        while (left := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                break
            changed.clear()
            view = await get_job(rt, user_id, job_id)
            if view["status"] in TERMINAL:
                return view
    return await get_job(rt, user_id, job_id)
