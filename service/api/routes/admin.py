from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, patch, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, HeaderParameter, JSONBody

from service.api.routes.deps import UserRequest
from service.api.schemas import CreditGrant, IdempotencyKey, PlanChange, UserCreate
from service.api.users import me
from service.errors import BadArgument, TollgateError
from service.history.queries import ensure_user_row, set_user_plan
from service.runtime import Runtime
from service.state.codes import Code
from service.state.plans import PLANS


class UserExists(TollgateError):
    status, code, title = 409, "user_exists", "The user exists already"


def admins_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if not getattr(connection.user, "admin", False):
        raise PermissionDeniedException("this endpoint needs a token with role=admin")


OptionalKey = Annotated[IdempotencyKey | None, HeaderParameter(name="Idempotency-Key")]


class AdminController(Controller):
    path = "/admin/users"
    tags = ["admin"]
    guards = [admins_only]

    @post("/", status_code=201)
    async def create_user(self, rt: NamedDependency[Runtime], data: JSONBody[UserCreate]
                          ) -> dict[str, Any]:
        async with rt.sessions() as session, session.begin():  # SQL first: see service.api.users
            await ensure_user_row(session, data.id, data.plan)
        created = await rt.core.ensure_user(data.id, PLANS[data.plan], data.credits)
        if not created:
            raise UserExists(f"user {data.id!r} exists already")
        return await me(rt, data.id)

    @patch("/{user_id:str}")
    async def set_plan(self, rt: NamedDependency[Runtime], user_id: FromPath[str],
                       data: JSONBody[PlanChange], idempotency_key: OptionalKey = None
                       ) -> dict[str, Any]:
        await rt.core.set_plan(user_id, idempotency_key or uuid.uuid4().hex, PLANS[data.plan])
        async with rt.sessions() as session, session.begin():
            await set_user_plan(session, user_id, data.plan)
        return await me(rt, user_id)

    @post("/{user_id:str}/credits", status_code=200)
    async def grant_credits(self, request: UserRequest, rt: NamedDependency[Runtime],
                            user_id: FromPath[str], data: JSONBody[CreditGrant],
                            idempotency_key: OptionalKey = None) -> dict[str, Any]:
        if idempotency_key is None:
            raise BadArgument("an Idempotency-Key header is required for credit grants")
        balance = await rt.core.grant(user_id, idempotency_key, data.amount, data.reason)
        return {"user_id": user_id, "duplicate": balance.code is Code.ALREADY,
                "credits": {"available": balance.available, "reserved": balance.reserved,
                            "spent": balance.spent, "granted": balance.granted}}
