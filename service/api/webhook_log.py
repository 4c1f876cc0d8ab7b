"""The user's side of webhooks: the per-user signing secret, a job's delivery log (Redis
while it is there, then SQL for 30 days) and redelivery."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

from service.errors import NotFound
from service.history.deliveries import job_deliveries, upsert_deliveries
from service.history.models import WebhookDeliveryLog
from service.jobs.deliveries import (
    WebhookPoster,
    delivery_row,
    log_entry,
    redelivery,
    sender_client,
)
from service.jobs.views import get_job, webhook_job_view
from service.jobs.webhooks import new_secret
from service.runtime import Runtime
from service.state.outbox import Outbox
from service.state.records import datetime_to_ms
from service.state.store import now_ms

log = logging.getLogger("tollgate.webhooks")

# Redeliveries in flight in this process: kept referenced until they end.
_REDELIVERIES: set[asyncio.Task[None]] = set()


def _from_sql(row: WebhookDeliveryLog) -> dict[str, Any]:
    """A SQL row in the shape of a Redis record (times in ms), for log_entry."""
    def ms(value: Any) -> int | None:
        return None if value is None else datetime_to_ms(value)

    return {"id": row.id, "job_id": row.job_id, "owner": row.user_id, "type": row.type,
            "url": row.url, "attempts": row.attempts, "last_status": row.last_status,
            "created_at": ms(row.created_at), "delivered_at": ms(row.delivered_at),
            "next_attempt_at": ms(row.next_attempt_at), "gave_up_at": ms(row.gave_up_at),
            "body": row.body, "redelivery_of": row.redelivery_of}


async def _records(rt: Runtime, job_id: str) -> dict[str, dict[str, Any]]:
    """Every delivery of the job: the SQL log, with what Redis still holds over it (newer:
    attempts after the job's flush are recorded there first)."""
    async with rt.sessions() as session:
        rows = await job_deliveries(session, job_id)
    records = {row.id: _from_sql(row) for row in rows}
    for raw in (await Outbox(rt.core).log(job_id)).values():
        record = json.loads(raw)
        records[record["id"]] = record
    return records


async def delivery_log(rt: Runtime, user_id: str, job_id: str) -> dict[str, Any]:
    """Every delivery of the job's events, oldest first; another user's job is a 404."""
    await get_job(rt, user_id, job_id, with_items=False)
    records = sorted((await _records(rt, job_id)).values(),
                     key=lambda record: (record["created_at"], record["id"]))
    return {"items": [log_entry(record) for record in records]}


async def redeliver(rt: Runtime, user_id: str, job_id: str, delivery_id: str
                    ) -> dict[str, Any]:
    """Records a new delivery of the event in the job's log and starts its one attempt now
    (not waiting for it: 202); its outcome goes to the log in Redis and in SQL."""
    await get_job(rt, user_id, job_id, with_items=False)
    original = (await _records(rt, job_id)).get(delivery_id)
    if original is None or original.get("job_id") != job_id:
        raise NotFound(f"no delivery {delivery_id!r} of job {job_id!r}")
    now = now_ms()
    record = redelivery(original, f"{job_id}.redeliver.{now}{secrets.token_hex(3)}", now)
    await Outbox(rt.core).add_record(record["id"], json.dumps(record))
    task = asyncio.create_task(_attempt(rt, record), name=f"redeliver {record['id']}")
    _REDELIVERIES.add(task)
    task.add_done_callback(_REDELIVERIES.discard)
    return log_entry(record)


async def _attempt(rt: Runtime, record: dict[str, Any]) -> None:
    outbox = Outbox(rt.core)

    async def view(owner: str, job_id: str) -> dict[str, Any] | None:
        return await webhook_job_view(rt, owner, job_id)

    client = sender_client(rt.settings)
    try:
        await WebhookPoster(outbox, rt.settings, view, client).attempt(record["id"], record)
        raw = await outbox.record(record["id"])
        if raw is not None:  # the job may be in SQL already: its log there gets this too
            async with rt.sessions() as session, session.begin():
                await upsert_deliveries(session, [delivery_row(json.loads(raw))])
    except Exception:  # the log shows it unattempted; the user may redeliver again
        log.exception("redelivery %s failed", record["id"])
    finally:
        await client.aclose()


async def webhook_secret(rt: Runtime, user_id: str, *, rotate: bool = False) -> dict[str, str]:
    """The secret deliveries are signed with; made on first use, replaced by a rotation."""
    return {"secret": await Outbox(rt.core).secret(user_id, new_secret(), rotate=rotate)}
