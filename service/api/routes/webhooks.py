from __future__ import annotations

from typing import Any

from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import ServerSentEvent

from service.api import live, streams, webhook_log
from service.api.openapi import refusals
from service.api.routes.deps import UserRequest
from service.api.schemas import WebhookDelivery, WebhookLog, WebhookSecret, body
from service.errors import NotFound, TooManyStreams
from service.runtime import Runtime


@get("/jobs/{job_id:str}/events", tags=["jobs"], responses=refusals(NotFound, TooManyStreams),
     summary="Live progress: one Server-Sent Event per change, until a terminal status",
     media_type="text/event-stream")
async def job_events(request: UserRequest, rt: NamedDependency[Runtime],
                     job_id: FromPath[str]) -> ServerSentEvent:
    user_id = request.user.user_id
    first, seen = await live.opening(rt, user_id, job_id)  # 404 before the stream
    slot = await streams.take_slot(rt, user_id)  # 429 too_many_streams past the limit
    watch = live.change_watch(request.app.state, rt)
    events = live.job_events(rt, watch, user_id, first, seen)
    return ServerSentEvent(streams.holding_slot(rt, user_id, slot, events),
                           headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


@get("/jobs/{job_id:str}/webhooks", tags=["jobs"], responses=refusals(NotFound),
     summary="The deliveries of the job's webhook events")
async def job_webhooks(request: UserRequest, rt: NamedDependency[Runtime],
                       job_id: FromPath[str]) -> WebhookLog:
    return body(WebhookLog, await webhook_log.delivery_log(rt, request.user.user_id, job_id))


@post("/jobs/{job_id:str}/webhooks/{delivery_id:str}/redeliver", status_code=202,
      tags=["jobs"], responses=refusals(NotFound),
      summary="Send the event of one delivery again, now: one attempt, a new webhook-id, "
              "signed with the current secret, recorded in the log")
async def redeliver_webhook(request: UserRequest, rt: NamedDependency[Runtime],
                            job_id: FromPath[str], delivery_id: FromPath[str]
                            ) -> WebhookDelivery:
    return body(WebhookDelivery, await webhook_log.redeliver(rt, request.user.user_id, job_id,
                                                            delivery_id))


@get("/me/webhook-secret", tags=["webhooks"], responses=refusals(),
     summary="The secret that signs the caller's webhook deliveries")
async def get_webhook_secret(request: UserRequest, rt: NamedDependency[Runtime]
                             ) -> WebhookSecret:
    return body(WebhookSecret, await webhook_log.webhook_secret(rt, request.user.user_id))


@post("/me/webhook-secret/rotate", status_code=200, tags=["webhooks"], responses=refusals(),
      summary="Replace the signing secret; deliveries from now on use the new one")
async def rotate_webhook_secret(request: UserRequest, rt: NamedDependency[Runtime]
                                ) -> WebhookSecret:
    return body(WebhookSecret,
                await webhook_log.webhook_secret(rt, request.user.user_id, rotate=True))


WEBHOOK_HANDLERS: list[Any] = [job_events, job_webhooks, redeliver_webhook,
                               get_webhook_secret, rotate_webhook_secret]
