from __future__ import annotations

from typing import Any

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service.api import rules
from service.api.routes.deps import UserRequest
from service.api.schemas import RuleCreate
from service.runtime import Runtime


class RulesController(Controller):
    path = "/rules"
    tags = ["rules"]

    @get("/")
    async def list_rules(self, request: UserRequest, rt: NamedDependency[Runtime]
                         ) -> dict[str, Any]:
        return {"items": await rules.list_rules(rt, request.user.user_id)}

    @post("/", status_code=201)
    async def create_rule(self, request: UserRequest, rt: NamedDependency[Runtime],
                          data: JSONBody[RuleCreate]) -> dict[str, Any]:
        return await rules.create_rule(rt, request.user.user_id, data)

    @get("/{rule_id:str}")
    async def get_rule(self, request: UserRequest, rt: NamedDependency[Runtime],
                       rule_id: FromPath[str]) -> dict[str, Any]:
        return rules.rule_view(await rules.get_rule(rt, request.user.user_id, rule_id))

    @delete("/{rule_id:str}", status_code=204)
    async def delete_rule(self, request: UserRequest, rt: NamedDependency[Runtime],
                          rule_id: FromPath[str]) -> None:
        await rules.delete_rule(rt, request.user.user_id, rule_id)
