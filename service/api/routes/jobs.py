from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from service.api import listing, waits
from service.api.metrics import KEY_CAP_REFUSALS
from service.api.openapi import refusals
from service.api.params import Cursor, OptionalIdempotencyKey
from service.api.responses import JsonResponse
from service.api.routes.deps import UserRequest
from service.api.schemas import JobCreated, JobPage, JobStatus, JobView, body
from service.api.waits import PreferHeader
from service.errors import (
    BadArgument,
    ConcurrencyLimit,
    IdempotencyKeyReused,
    InputsExpired,
    InsufficientCredits,
    InsufficientScope,
    InvalidTransition,
    KeySpendCapExceeded,
    NotFound,
    NothingToRetry,
    UnknownModel,
    UploadsMissing,
)
from service.jobs import create, lifecycle, views
from service.jobs.retry import retry_job
from service.jobs.schemas import JobCreate
from service.runtime import Runtime


class JobsController(Controller):
    path = "/jobs"
    tags = ["jobs"]

    @get("/", responses=refusals(BadArgument), description=(
        "The caller's jobs, live and history together, newest first. Pass `next_cursor` "
        "back as `cursor` until it is null; with a `status` filter a page may hold fewer "
        "than `limit` jobs (even none) and still have a `next_cursor`."))
    async def list_jobs(
        self,
        request: UserRequest,
        rt: NamedDependency[Runtime],
        status: FromQuery[JobStatus | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: Cursor = None,
    ) -> JobPage:
        return body(JobPage, await listing.list_jobs(rt, request.user.user_id, status=status,
                                                     limit=limit, cursor=cursor))

    @post("/", status_code=201, responses=refusals(
        InsufficientCredits, KeySpendCapExceeded, ConcurrencyLimit, NotFound,
        IdempotencyKeyReused, UnknownModel, InsufficientScope, json_body=True))
    async def create_job(
        self,
        request: UserRequest,
        rt: NamedDependency[Runtime],
        data: JSONBody[JobCreate],
        idempotency_key: OptionalIdempotencyKey = None,
    ) -> JobCreated:
        try:
            created = await create.create_job(rt, request.user.user_id, data, idempotency_key,
                                              key=request.user.key_spend)
        except KeySpendCapExceeded:
            KEY_CAP_REFUSALS.inc()
            raise
        return body(JobCreated, created)

    @get("/{job_id:str}", responses=refusals(NotFound), description=(
        "The job. With `Prefer: wait=N` (1-60) the answer waits until the job is final or "
        "N seconds pass (`Preference-Applied: wait=N`); a user holds at most 10 waits and "
        "event streams at once, past that the answer comes at once."))
    async def get_job(self, request: UserRequest, rt: NamedDependency[Runtime],
                      job_id: FromPath[str], prefer: PreferHeader = None
                      ) -> Response[JobView]:
        seconds = waits.wanted_wait(prefer)
        if seconds is None:
            return JsonResponse(body(JobView, await views.get_job(rt, request.user.user_id,
                                                                 job_id)))
        view, headers = await waits.until_final(rt, request.app.state, request.user.user_id,
                                                job_id, seconds)
        return JsonResponse(body(JobView, view), headers=headers)

    @post("/{job_id:str}/confirm-upload", status_code=200,
          responses=refusals(NotFound, UploadsMissing), description=(
              "Moves a created job whose uploads are all there to `uploaded`. On a job "
              "already uploaded or later (a retry) it answers the job where it is."))
    async def confirm_upload(self, request: UserRequest, rt: NamedDependency[Runtime],
                             job_id: FromPath[str]) -> JobView:
        return body(JobView, await lifecycle.confirm_upload(rt, request.user.user_id, job_id))

    @post("/{job_id:str}/execute", status_code=202,
          responses={**refusals(NotFound, InvalidTransition), 200: ResponseSpec(
              data_container=JobView, description="With `Prefer: wait=N`: the job once "
              "final, or after N seconds")}, description=(
              "Queues an uploaded job for the workers. On a job already queued, running or "
              "final (a retry) it answers the job where it is; 409 only before confirm. With "
              "`Prefer: wait=N` (1-60) it answers 200 once the job is final or N seconds "
              "passed, with `Preference-Applied: wait=N`."))
    async def execute(self, request: UserRequest, rt: NamedDependency[Runtime],
                      job_id: FromPath[str], prefer: PreferHeader = None
                      ) -> Response[JobView]:
        user_id = request.user.user_id
        view = await lifecycle.execute(rt, user_id, job_id)
        seconds = waits.wanted_wait(prefer)
        if seconds is None:
            return JsonResponse(body(JobView, view), status_code=202)
        view, headers = await waits.until_final(rt, request.app.state, user_id, job_id,
                                                seconds)
        return JsonResponse(body(JobView, view), status_code=200, headers=headers)

    @post("/{job_id:str}/retry", status_code=201, responses=refusals(
        NotFound, InvalidTransition, NothingToRetry, InputsExpired, InsufficientCredits,
        KeySpendCapExceeded, ConcurrencyLimit, IdempotencyKeyReused), description=(
            "A new job (`retry_of`) of the finished job's failed items, on their stored "
            "inputs, at its price and params: created `uploaded`, so execute it next. The "
            "inputs are kept TOLLGATE_RETRY_WINDOW after the job finished; then 410."))
    async def retry(self, request: UserRequest, rt: NamedDependency[Runtime],
                    job_id: FromPath[str], idempotency_key: OptionalIdempotencyKey = None
                    ) -> JobCreated:
        try:
            created = await retry_job(rt, request.user.user_id, job_id, idempotency_key,
                                      key=request.user.key_spend)
        except KeySpendCapExceeded:
            KEY_CAP_REFUSALS.inc()
            raise
        return body(JobCreated, created)

    @post("/{job_id:str}/cancel", status_code=200,
          responses=refusals(NotFound, InvalidTransition))
    async def cancel(self, request: UserRequest, rt: NamedDependency[Runtime],
                     job_id: FromPath[str]) -> JobView:
        return body(JobView, await lifecycle.cancel(rt, request.user.user_id, job_id))
