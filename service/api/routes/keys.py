"""API keys: the user's own (/me/keys) and the admin's view of a user's (/admin/users/{id}/keys)."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service.api.apikeys import create_key, list_keys, revoke_key
from service.api.openapi import refusals
from service.api.params import UserIdPath
from service.api.routes.admin import admins_only
from service.api.routes.deps import UserRequest
from service.api.schemas import KeyCreate, KeyList, KeyView, body
from service.api.users import known_in_sql
from service.errors import BadArgument, Forbidden, InsufficientScope, KeySlotsExhausted, NotFound
from service.runtime import Runtime


class KeysController(Controller):
    path = "/me/keys"
    tags = ["keys"]

    @post("/", status_code=201, responses=refusals(KeySlotsExhausted, InsufficientScope,
                                                   json_body=True), description=(
        "A new API key. Its `secret` (`tg_<id>_...`) is in this answer only: tollgate keeps "
        "a hash. Scopes default to every scope but keys:write; a `spend_cap` bounds what "
        "jobs made through the key may hold and charge in each UTC day or month."))
    async def create(self, request: UserRequest, rt: NamedDependency[Runtime],
                     data: JSONBody[KeyCreate]) -> KeyView:
        return body(KeyView, await create_key(rt, request.user.user_id, data))

    @get("/", responses=refusals())
    async def list(self, request: UserRequest, rt: NamedDependency[Runtime]) -> KeyList:
        return body(KeyList, {"items": await list_keys(rt, request.user.user_id)})

    @delete("/{key_id:str}", status_code=204, responses=refusals(NotFound, InsufficientScope),
            description="Revokes the key: every API process refuses it within 1 s.")
    async def revoke(self, request: UserRequest, rt: NamedDependency[Runtime],
                     key_id: FromPath[str]) -> None:
        await revoke_key(rt, request.user.user_id, key_id)


class AdminKeysController(Controller):
    path = "/admin/users/{user_id:str}/keys"
    tags = ["admin"]
    guards = [admins_only]

    @get("/", responses=refusals(Forbidden, NotFound, BadArgument))
    async def list(self, rt: NamedDependency[Runtime], user_id: UserIdPath) -> KeyList:
        await known_in_sql(rt, user_id)
        return body(KeyList, {"items": await list_keys(rt, user_id)})

    @delete("/{key_id:str}", status_code=204,
            responses=refusals(Forbidden, NotFound, BadArgument))
    async def revoke(self, rt: NamedDependency[Runtime], user_id: UserIdPath,
                     key_id: FromPath[str]) -> None:
        await revoke_key(rt, user_id, key_id)
