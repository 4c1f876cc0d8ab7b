from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, patch, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import HeaderParameter, JSONBody

from service.api.openapi import refusals
from service.api.params import OptionalIdempotencyKey, UserIdPath
from service.api.routes.deps import UserRequest
from service.api.schemas import (
    CreditBalance,
    CreditGrant,
    Credits,
    MeView,
    PlanChange,
    UserCreate,
    body,
)
from service.api.users import admin_create_user, admin_grant, admin_set_plan, me
from service.contract import IDEMPOTENCY_KEY_MAX, IDEMPOTENCY_KEY_PATTERN
from service.errors import (
    BadArgument,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientCredits,
    NotFound,
    TooManyGrants,
    UserExists,
)
from service.runtime import Runtime
from service.state.codes import Code


def admins_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    # Litestar's automatic OPTIONS answer (the allowed methods) runs without auth, so there
    # is no user in its scope: `connection.user` would raise (a 500).
    if connection.scope.get("method") == "OPTIONS":
        return
    if not getattr(connection.scope.get("user"), "admin", False):
        raise PermissionDeniedException("this endpoint needs a token with role=admin")


# Required: a retried grant must never add the credits twice.
RequiredIdempotencyKey = Annotated[str, HeaderParameter(
    name="Idempotency-Key", required=True, min_length=1, max_length=IDEMPOTENCY_KEY_MAX,
    pattern=IDEMPOTENCY_KEY_PATTERN)]


class AdminController(Controller):
    path = "/admin/users"
    tags = ["admin"]
    guards = [admins_only]

    @post("/", status_code=201, responses=refusals(Forbidden, UserExists, json_body=True))
    async def create_user(self, rt: NamedDependency[Runtime], data: JSONBody[UserCreate]
                          ) -> MeView:
        # SQL first, then Redis from SQL: see service.api.users
        if not await admin_create_user(rt, data.id, data.plan, data.credits):
            raise UserExists(f"user {data.id!r} exists already")
        return body(MeView, await me(rt, data.id))

    @patch("/{user_id:str}", responses=refusals(Forbidden, NotFound, json_body=True))
    async def set_plan(self, rt: NamedDependency[Runtime], user_id: UserIdPath,
                       data: JSONBody[PlanChange], idempotency_key: OptionalIdempotencyKey = None
                       ) -> MeView:
        await admin_set_plan(rt, user_id, data.plan, idempotency_key)
        return body(MeView, await me(rt, user_id))

    @post("/{user_id:str}/credits", status_code=200,
          responses=refusals(Forbidden, NotFound, InsufficientCredits, IdempotencyKeyReused,
                             TooManyGrants, json_body=True))
    async def grant_credits(self, request: UserRequest, rt: NamedDependency[Runtime],
                            user_id: UserIdPath, data: JSONBody[CreditGrant],
                            idempotency_key: RequiredIdempotencyKey) -> CreditBalance:
        # The body is decoded leniently ("1" and 1.0 become 1); money takes a JSON integer
        # only. The raw JSON is parsed once more, on this admin route only.
        if type((await request.json()).get("amount")) is not int:
            raise BadArgument("amount must be a JSON integer")
        balance = await admin_grant(rt, user_id, idempotency_key, data.amount, data.reason,
                                    kind=data.kind, expires_at=data.expires_at)
        return CreditBalance(user_id=user_id, duplicate=balance.code is Code.ALREADY,
                             credits=Credits(available=balance.available,
                                             reserved=balance.reserved, spent=balance.spent,
                                             granted=balance.granted))
