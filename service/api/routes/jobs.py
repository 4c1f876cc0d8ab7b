from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from service.api import jobs, rules
from service.api.routes.deps import UserRequest
from service.api.schemas import IdempotencyKey, JobCreate
from service.runtime import Runtime

Status = Literal["created", "uploaded", "queued", "running", "done", "failed", "canceled"]


class JobsController(Controller):
    path = "/jobs"
    tags = ["jobs"]

    @get("/")
    async def list_jobs(
        self,
        request: UserRequest,
        rt: NamedDependency[Runtime],
        status: FromQuery[Status | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        return await jobs.list_jobs(rt, request.user.user_id, status=status,
                                    limit=limit, cursor=cursor)

    @post("/", status_code=201)
    async def create_job(
        self,
        request: UserRequest,
        rt: NamedDependency[Runtime],
        data: JSONBody[JobCreate],
        idempotency_key: Annotated[IdempotencyKey | None,
                                   HeaderParameter(name="Idempotency-Key")] = None,
    ) -> dict[str, Any]:
        if data.rule_id is not None:
            await rules.get_rule(rt, request.user.user_id, data.rule_id)
        return await jobs.create_job(rt, request.user.user_id, data, idempotency_key)

    @get("/{job_id:str}")
    async def get_job(self, request: UserRequest, rt: NamedDependency[Runtime],
                      job_id: FromPath[str]) -> dict[str, Any]:
        return await jobs.get_job(rt, request.user.user_id, job_id)

    @post("/{job_id:str}/confirm-upload", status_code=200)
    async def confirm_upload(self, request: UserRequest, rt: NamedDependency[Runtime],
                             job_id: FromPath[str]) -> dict[str, Any]:
        return await jobs.confirm_upload(rt, request.user.user_id, job_id)

    @post("/{job_id:str}/execute", status_code=202)
    async def execute(self, request: UserRequest, rt: NamedDependency[Runtime],
                      job_id: FromPath[str]) -> dict[str, Any]:
        return await jobs.execute(rt, request.user.user_id, job_id)

    @post("/{job_id:str}/cancel", status_code=200)
    async def cancel(self, request: UserRequest, rt: NamedDependency[Runtime],
                     job_id: FromPath[str]) -> dict[str, Any]:
        return await jobs.cancel(rt, request.user.user_id, job_id)
