"""The user's side of webhooks: the per-user signing secret and a job's delivery log."""

from __future__ import annotations

import json
from typing import Any

from service.api.jobs import get_job
from service.runtime import Runtime
from service.state.outbox import Outbox
from service.webhooks import log_entry, new_secret


async def delivery_log(rt: Runtime, user_id: str, job_id: str) -> dict[str, Any]:
    """Every delivery of the job's events, oldest first; another user's job is a 404."""
    await get_job(rt, user_id, job_id, with_items=False)
    records = [json.loads(raw) for raw in (await Outbox(rt.core).log(job_id)).values()]
    records.sort(key=lambda record: (record["created_at"], record["id"]))
    return {"items": [log_entry(record) for record in records]}


async def webhook_secret(rt: Runtime, user_id: str, *, rotate: bool = False) -> dict[str, str]:
    """The secret deliveries are signed with; made on first use, replaced by a rotation."""
    return {"secret": await Outbox(rt.core).secret(user_id, new_secret(), rotate=rotate)}


async def webhook_job_view(rt: Runtime, owner: str, job_id: str) -> dict[str, Any]:
    """The `data` of a delivery: the job view without items, as GET /jobs lists it. The
    command line hands this to the sweeper, which may not import the API."""
    return await get_job(rt, owner, job_id, with_items=False)
