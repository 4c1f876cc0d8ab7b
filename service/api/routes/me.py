from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from service.api.openapi import refusals
from service.api.routes.deps import UserRequest
from service.api.schemas import MeView, body
from service.api.users import me
from service.runtime import Runtime


@get("/me", summary="The caller's plan, credits, concurrency and rule slots",
     responses=refusals())
async def get_me(request: UserRequest, rt: NamedDependency[Runtime]) -> MeView:
    return body(MeView, await me(rt, request.user.user_id))
