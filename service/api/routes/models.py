from __future__ import annotations

import logging

from litestar import get
from litestar.di import NamedDependency

from service.api.openapi import refusals
from service.api.schemas import ModelList, body
from service.jobs.views import POSITION_UNREAD
from service.runtime import Runtime
from service.state.sched import SchedState

log = logging.getLogger(__name__)


@get("/models", summary="The models a job can run on, with their prices and limits",
     tags=["models"], responses=refusals())
async def list_models(rt: NamedDependency[Runtime]) -> ModelList:
    """With each model's live workers and the items waiting in its dispatch order
    (docs/scheduling.md): 0 and 0 when they cannot be read now."""
    views = rt.models.public_views()
    queues = {model.name: model.queue for model in rt.models}
    sched = SchedState(rt.core)
    try:
        workers = await rt.live_workers.counts(rt.models.queues())
        waiting = {queue: await sched.queued_items(queue) for queue in set(queues.values())}
    except POSITION_UNREAD as error:
        log.warning("GET /models: workers or queued items unread: %s", type(error).__name__)
        workers, waiting = {}, {}
    for view in views:
        queue = queues[view["name"]]
        view["workers"] = workers.get(queue, 0)
        view["queued_items"] = waiting.get(queue, 0)
    return body(ModelList, {"items": views})
