"""Balance alerts and the account webhook (docs/billing.md): /me/webhook and /me/alerts."""

from __future__ import annotations

from litestar import Controller, delete, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody

from service.api.openapi import refusals
from service.api.routes.deps import UserRequest
from service.api.schemas import (
    AccountDeliveryLog,
    AccountWebhook,
    AccountWebhookIn,
    Alerts,
    AlertsIn,
    body,
)
from service.errors import BadArgument, InsufficientScope, NotFound, WebhookUrlNotAllowed
from service.jobs import alerts
from service.jobs.provisioning import provision_user
from service.runtime import Runtime


class AccountWebhookController(Controller):
    path = "/me/webhook"
    tags = ["webhooks"]

    @put("/", responses=refusals(WebhookUrlNotAllowed, InsufficientScope, json_body=True),
         summary="Set the account webhook: where credits.low, credits.exhausted and "
                 "credits.expiring go, signed like job webhooks")
    async def set(self, request: UserRequest, rt: NamedDependency[Runtime],
                  data: JSONBody[AccountWebhookIn]) -> AccountWebhook:
        await provision_user(rt, request.user.user_id)
        return body(AccountWebhook, await alerts.set_webhook(
            rt, request.user.user_id, data.url, list(data.events)))

    @get("/", responses=refusals(NotFound), summary="The account webhook")
    async def show(self, request: UserRequest, rt: NamedDependency[Runtime]) -> AccountWebhook:
        return body(AccountWebhook, await alerts.get_webhook(rt, request.user.user_id))

    @delete("/", status_code=204, responses=refusals(InsufficientScope),
            summary="Remove the account webhook (events recorded before still go out)")
    async def remove(self, request: UserRequest, rt: NamedDependency[Runtime]) -> None:
        await provision_user(rt, request.user.user_id)
        await alerts.delete_webhook(rt, request.user.user_id)

    @get("/deliveries", responses=refusals(),
         summary="The account webhook's deliveries (the newest 50), newest first")
    async def deliveries(self, request: UserRequest, rt: NamedDependency[Runtime]
                         ) -> AccountDeliveryLog:
        return body(AccountDeliveryLog,
                    {"items": await alerts.webhook_deliveries(rt, request.user.user_id)})


class AlertsController(Controller):
    path = "/me/alerts"
    tags = ["webhooks"]

    @put("/", responses=refusals(BadArgument, InsufficientScope, json_body=True),
         summary="Set the low-balance alert (`low_balance` null turns it off)")
    async def set(self, request: UserRequest, rt: NamedDependency[Runtime],
                  data: JSONBody[AlertsIn]) -> Alerts:
        # The body is decoded leniently ("5" and 5.0 become 5); a credit figure takes a JSON
        # integer only, as the admin grant's amount (routes/admin.py).
        if data.low_balance is not None and type(
                (await request.json()).get("low_balance")) is not int:
            raise BadArgument("low_balance must be a JSON integer or null")
        await provision_user(rt, request.user.user_id)
        return body(Alerts, await alerts.set_alerts(rt, request.user.user_id, data.low_balance))

    @get("/", responses=refusals(), summary="The low-balance alert")
    async def show(self, request: UserRequest, rt: NamedDependency[Runtime]) -> Alerts:
        return body(Alerts, await alerts.get_alerts(rt, request.user.user_id))
