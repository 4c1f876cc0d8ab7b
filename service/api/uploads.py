"""Which local-folder uploads are still open: a job's input only while the job is `created`.

The /files PUT route asks this before and after the bytes arrive, so an upload URL stops
working once its job is confirmed, canceled or finished (409 invalid_transition) and the
bytes of a refused upload are never kept. S3 cannot ask anything on a presigned PUT: there
the confirm step fixes what a job reads, and the flusher deletes a finished job's inputs
at its flush and the whole folder once its results expire.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from service.contract import job_of_input_key
from service.errors import InvalidTransition
from service.runtime import Runtime
from service.state.fsm import JobState


async def check_upload(request: Request[Any, Any, Any], key: str) -> None:
    job_id = job_of_input_key(key)
    if job_id is None:
        return  # a worker's output: its signature alone decides
    runtime: Runtime = request.app.state.runtime
    state = await runtime.core.job_state(job_id)  # one field: asked twice per upload
    if state is None:  # flushed to history: finished long ago
        raise InvalidTransition("uploads are closed: the job has finished")
    if state != JobState.CREATED:
        raise InvalidTransition(f"uploads are closed: the job is {state}",
                                job_status=str(state))
