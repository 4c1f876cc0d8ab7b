from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service.api import rules
from service.api.openapi import refusals
from service.api.routes.deps import UserRequest
from service.api.schemas import RuleCreate, RuleList, RulePatch, RuleView, body
from service.errors import (
    NotFound,
    PriorityNotAllowed,
    RuleSlotsExhausted,
    UnknownModel,
    WebhookUrlNotAllowed,
)
from service.jobs import presets
from service.runtime import Runtime


class RulesController(Controller):
    path = "/rules"
    tags = ["rules"]

    @get("/", responses=refusals())
    async def list_rules(self, request: UserRequest, rt: NamedDependency[Runtime]
                         ) -> RuleList:
        return body(RuleList, {"items": await rules.list_rules(rt, request.user.user_id)})

    @post("/", status_code=201, responses=refusals(RuleSlotsExhausted, UnknownModel,
                                                   WebhookUrlNotAllowed, PriorityNotAllowed,
                                                   json_body=True))
    async def create_rule(self, request: UserRequest, rt: NamedDependency[Runtime],
                          data: JSONBody[RuleCreate]) -> RuleView:
        return body(RuleView, await rules.create_rule(rt, request.user.user_id, data))

    @get("/{rule_id:str}", responses=refusals(NotFound))
    async def get_rule(self, request: UserRequest, rt: NamedDependency[Runtime],
                       rule_id: FromPath[str]) -> RuleView:
        return body(RuleView,
                    rules.rule_view(await presets.get_rule(rt, request.user.user_id, rule_id)))

    @patch("/{rule_id:str}", status_code=200, responses=refusals(
        NotFound, UnknownModel, WebhookUrlNotAllowed, PriorityNotAllowed, json_body=True))
    async def update_rule(self, request: UserRequest, rt: NamedDependency[Runtime],
                          rule_id: FromPath[str], data: JSONBody[RulePatch]) -> RuleView:
        return body(RuleView, await rules.update_rule(rt, request.user.user_id, rule_id, data))

    @delete("/{rule_id:str}", status_code=204, responses=refusals(NotFound))
    async def delete_rule(self, request: UserRequest, rt: NamedDependency[Runtime],
                          rule_id: FromPath[str]) -> None:
        await rules.delete_rule(rt, request.user.user_id, rule_id)
