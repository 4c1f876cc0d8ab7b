"""GET /me/usage and GET /admin/usage: the usage statement (service.api.usage)."""

from __future__ import annotations

from typing import Annotated

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from service.api.openapi import refusals
from service.api.routes.admin import admins_only
from service.api.routes.deps import UserRequest
from service.api.schemas import USER_ID_MAX, USER_ID_PATTERN
from service.api.usage import (
    DESCRIPTION,
    FromDate,
    GroupByParam,
    ToDate,
    UsageView,
    answer,
)
from service.errors import BadArgument, Forbidden
from service.runtime import Runtime

UserIdQuery = Annotated[str | None, QueryParameter(
    name="user_id", min_length=1, max_length=USER_ID_MAX, pattern=USER_ID_PATTERN,
    description="Only this user's jobs; without it, every user's.")]


@get("/me/usage", summary="The caller's usage statement (JSON, or CSV with Accept: text/csv)",
     description=DESCRIPTION, responses=refusals(BadArgument), tags=["usage"])
async def me_usage(request: UserRequest, rt: NamedDependency[Runtime], from_: FromDate,
                   to: ToDate, group_by: GroupByParam = "day") -> Response[UsageView]:
    return await answer(request, rt, request.user.user_id, from_, to, group_by)


@get("/admin/usage", summary="The usage statement across users, or of one user",
     description=DESCRIPTION, responses=refusals(BadArgument, Forbidden), tags=["admin"],
     guards=[admins_only])
async def admin_usage(request: UserRequest, rt: NamedDependency[Runtime], from_: FromDate,
                      to: ToDate, group_by: GroupByParam = "day",
                      user_id: UserIdQuery = None) -> Response[UsageView]:
    return await answer(request, rt, user_id, from_, to, group_by)


USAGE_HANDLERS = [me_usage, admin_usage]
