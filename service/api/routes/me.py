from __future__ import annotations

from typing import Any

from litestar import get
from litestar.di import NamedDependency

from service.api.routes.deps import UserRequest
from service.api.users import me
from service.runtime import Runtime


@get("/me", summary="The caller's plan, credits, concurrency and rule slots")
async def get_me(request: UserRequest, rt: NamedDependency[Runtime]) -> dict[str, Any]:
    return await me(rt, request.user.user_id)
