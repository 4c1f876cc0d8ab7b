"""One webhook delivery: its attempt (POST to the checked address, outcome recorded) and the
shapes of its record, shared by the flusher's sender and the API's redelivery.

The Lua scripts record each event in the same call as the change (lua/includes/outbox.lua);
an attempt records its outcome (lua/webhook_result.lua). One that dies mid-attempt loses
nothing: the claim runs out and the delivery is due again, with the same `webhook-id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from service.errors import NotFound, WebhookUrlNotAllowed
from service.jobs.webhooks import new_secret, pinned_request, resolve_allowed, sign
from service.settings import Settings
from service.state.codes import Code
from service.state.fsm import JobState
from service.state.outbox import Outbox
from service.state.records import iso_z, ms_to_datetime
from service.state.store import now_ms

log = logging.getLogger("tollgate.webhooks")
T = TypeVar("T")

# Seconds before each retry: the first within 10 s, the last attempt ~39.7 h after the first.
RETRY_DELAYS_S = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800, 28800, 28800)

# (owner, job id) -> the job view, live or from history; None when there is no such job.
JobView = Callable[[str, str], Awaitable[dict[str, Any] | None]]


def log_entry(record: dict[str, Any]) -> dict[str, Any]:
    """One delivery as GET /jobs/{id}/webhooks shows it."""
    def at(field: str) -> str | None:
        value = record.get(field)
        return iso_z(ms_to_datetime(int(value))) if isinstance(value, int | float) else None

    return {"id": record["id"], "type": record["type"], "attempts": int(record["attempts"]),
            "last_status": record.get("last_status"), "delivered_at": at("delivered_at"),
            "next_attempt_at": at("next_attempt_at"), "gave_up_at": at("gave_up_at"),
            "redelivery_of": record.get("redelivery_of")}


def redelivery(original: dict[str, Any], delivery_id: str, now: int) -> dict[str, Any]:
    """A new delivery of the same event (its body as first sent, when it was sent): one
    attempt, with its own webhook-id, signed with the secret of the moment it is made."""
    # The event's moment is its timestamp (a log read back from SQL has no snapshot).
    snapshot = {**(original.get("snapshot") or {})}
    snapshot.setdefault("at", original["created_at"])
    record = {"id": delivery_id, "job_id": original["job_id"], "owner": original["owner"],
              "type": original["type"], "url": original["url"],
              "snapshot": snapshot, "created_at": now, "attempts": 0,
              "next_attempt_at": now, "max_attempts": 1, "redelivery_of": original["id"]}
    if original.get("body"):
        record["body"] = original["body"]
    return record


def delivery_row(record: dict[str, Any]) -> dict[str, Any]:
    """A webhook_deliveries row from a delivery record of the job's log in Redis (JSON
    written by lua/includes/outbox.lua and lua/webhook_result.lua, times in ms)."""
    def at(name: str) -> datetime | None:
        value = record.get(name)
        return ms_to_datetime(int(value)) if isinstance(value, int | float) else None

    status = record.get("last_status")
    return {"id": str(record["id"]), "job_id": str(record["job_id"]),
            "user_id": str(record.get("owner") or ""), "type": str(record["type"]),
            "url": str(record.get("url") or ""), "attempts": int(record.get("attempts") or 0),
            "last_status": int(status) if isinstance(status, int | float) else None,
            "created_at": ms_to_datetime(int(record["created_at"])),
            "delivered_at": at("delivered_at"), "next_attempt_at": at("next_attempt_at"),
            "gave_up_at": at("gave_up_at"), "body": record.get("body") or None,
            "redelivery_of": record.get("redelivery_of") or None}


def _as_of(view: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The job as it was at the event. The script that recorded the event kept its moment
    (status, counts, time: lua/includes/outbox.lua); the view is read later, so what the
    changes since then wrote is put back as it was: before the end nothing is charged or
    refunded and there is no end time or reason, and the event's own change was the last."""
    snapshot = record.get("snapshot") or {}
    if record["type"] == "job.completed" or not snapshot.get("status"):
        return view  # the final state: nothing changes after it
    done, failed = int(snapshot.get("done") or 0), int(snapshot.get("failed") or 0)
    total = int(view.get("total_items") or 0)
    as_of = {**view, "status": snapshot["status"], "done_items": done, "failed_items": failed,
             "progress": round((done + failed) / total, 4) if total else 0.0,
             "charged": 0, "refunded": 0, "finished_at": None, "reason": None,
             "result_expired": False}
    if snapshot["status"] != JobState.QUEUED:
        as_of["queue_position"] = None
    if isinstance(snapshot.get("at"), int | float):
        at = iso_z(ms_to_datetime(int(snapshot["at"])))
        as_of["updated_at"] = at
        if record["type"] == "job.started":
            as_of["started_at"] = at
    return as_of


@dataclass
class WebhookPoster:
    """Makes one attempt of a claimed delivery at a time (the flusher's WebhookSender adds
    the concurrency; a redelivery uses this as it is)."""
    outbox: Outbox
    settings: Settings
    view: JobView
    client: httpx.AsyncClient

    async def _redis(self, call: Callable[[], Awaitable[T]]) -> T:
        return await call()

    async def _body(self, record: dict[str, Any]) -> bytes | None:
        if record.get("body"):
            return str(record["body"]).encode()
        if "data" in record:  # an account event (lua/includes/alerts.lua): its own data
            payload = {"type": record["type"],
                       "timestamp": iso_z(ms_to_datetime(int(record["created_at"]))),
                       "data": record["data"]}
            return json.dumps(payload, separators=(",", ":")).encode()
        view = await self._redis(lambda: self.view(record["owner"], record["job_id"]))
        if view is None:
            return None
        at = int((record.get("snapshot") or {}).get("at") or record["created_at"])
        payload = {"type": record["type"], "timestamp": iso_z(ms_to_datetime(at)),
                   "data": _as_of(view, record)}
        return json.dumps(payload, separators=(",", ":")).encode()

    async def attempt(self, delivery_id: str, record: dict[str, Any] | None = None) -> bool:
        """One attempt of a claimed delivery (its record read now unless given); True when
        its outcome was recorded."""
        if record is None:
            raw = await self._redis(functools.partial(self.outbox.record, delivery_id))
            if raw is None:  # the log expired or was never written: drop the due entry
                with contextlib.suppress(NotFound):
                    await self._redis(lambda: self.outbox.result(
                        delivery_id, "gave_up", attempts_seen=0, status=None, log_ttl_ms=1))
                return False
            record = json.loads(raw)
            if record.get("delivered_at") or record.get("gave_up_at"):
                return False
        seen = int(record["attempts"])
        body = await self._body(record)
        status: int | None = None
        if body is not None:
            status = await self._post(record["url"], delivery_id, body, record["owner"])
        if status is not None and 200 <= status < 300:
            outcome, next_ms = "delivered", 0
        elif (seen >= len(RETRY_DELAYS_S) or body is None
              or seen + 1 >= int(record.get("max_attempts") or len(RETRY_DELAYS_S) + 1)):
            outcome, next_ms = "gave_up", 0  # a redelivery makes one attempt only
        else:
            outcome, next_ms = "failed", now_ms() + RETRY_DELAYS_S[seen] * 1000
        # The body is not kept: each attempt rebuilds it from the job and the event's
        # snapshot, the same bytes while the job is final or the snapshot holds (a record
        # written before this kept its body, which is sent as it is).
        code = await self._redis(lambda: self.outbox.result(
            delivery_id, outcome, attempts_seen=seen, status=status, next_attempt_ms=next_ms,
            log_ttl_ms=self.settings.webhook_log_ttl * 1000))
        return code is Code.OK

    async def _post(self, url: str, msg_id: str, body: bytes, owner: str) -> int | None:
        """The answer's status, or None when nothing answered in time (or the URL is now
        refused)."""
        try:
            address = await resolve_allowed(url, self.settings.webhook_allow_private)
        except WebhookUrlNotAllowed as exc:
            log.warning("webhook %s not sent: %s", msg_id, exc.detail)
            return None
        secret = await self._redis(lambda: self.outbox.secret(owner, new_secret()))
        timestamp = int(datetime.now(UTC).timestamp())
        pinned, headers, extensions = pinned_request(url, address)
        headers |= {"content-type": "application/json", "webhook-id": msg_id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": sign(secret, msg_id, timestamp, body),
                    "user-agent": "tollgate-webhooks"}
        request = self.client.build_request("POST", pinned, content=body, headers=headers,
                                            extensions=extensions)
        try:
            async with asyncio.timeout(self.settings.webhook_timeout):
                response = await self.client.send(request, stream=True)  # body unread
                await response.aclose()
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            log.info("webhook %s to %s: no answer (%s)", msg_id, url, type(exc).__name__)
            return None
        return response.status_code


def sender_client(settings: Settings) -> httpx.AsyncClient:
    """Redirects are not followed: a 3xx could lead past the address check."""
    return httpx.AsyncClient(follow_redirects=False, trust_env=False,
                             timeout=httpx.Timeout(settings.webhook_timeout))
