"""Webhooks: the URL check, Standard Webhooks signing, and delivery from the outbox.

The Lua scripts record each event in the same call as the change (lua/includes/outbox.lua);
`WebhookSender` claims due deliveries per bucket, POSTs them and records each attempt's
outcome (lua/webhook_result.lua). A sender that dies mid-attempt loses nothing: the claim
runs out and the delivery is due again, with the same `webhook-id`.

A URL is checked when the job is created and again on every attempt, on the address it
resolves to then; the request goes to that checked address (Host header and TLS server name
set from the URL), so a DNS answer that changes after the check cannot point it elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from service.errors import NotFound, WebhookUrlNotAllowed
from service.settings import Settings
from service.state.codes import Code
from service.state.due import DueIndex
from service.state.fsm import JobState
from service.state.outbox import Outbox
from service.state.records import iso_z, ms_to_datetime
from service.state.store import now_ms

log = logging.getLogger("tollgate.webhooks")

EVENTS = ("started", "progress", "completed")
DEFAULT_EVENTS = ("completed",)
# Seconds before each retry: the first within 10 s, the last attempt ~39.7 h after the first.
RETRY_DELAYS_S = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800, 28800, 28800)
DELIVERIES_IN_FLIGHT = 16
SECRET_BYTES = 24
RESOLVE_TIMEOUT_S = 5.0

# (owner, job id) -> the job view, live or from history; None when there is no such job.
JobView = Callable[[str, str], Awaitable[dict[str, Any] | None]]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of '{id}.{timestamp}.{body}', keyed with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def address_allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast or ip.is_unspecified:
        return False
    return allow_private or ip.is_global


def _split(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlNotAllowed(f"{url!r} is not a URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookUrlNotAllowed("the webhook URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise WebhookUrlNotAllowed("the webhook URL must not carry credentials")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def resolve_allowed(url: str, allow_private: bool) -> str:
    """The first address the URL's host resolves to, if every address is allowed."""
    _, host, port = _split(url)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise WebhookUrlNotAllowed(f"the webhook host {host!r} does not resolve") from exc
    addresses = [str(info[4][0]) for info in infos]
    refused = [a for a in addresses if not address_allowed(a, allow_private)]
    if not addresses or refused:
        raise WebhookUrlNotAllowed(
            f"the webhook host {host!r} resolves to a private, loopback or link-local address",
            addresses=refused)
    return addresses[0]


def pinned_request(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(URL naming the checked address, headers, extensions): the connection goes to
    `address`; Host and the TLS server name still say the URL's host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    ip_host = f"[{address}]" if ":" in address else address
    netloc = ip_host + (f":{parts.port}" if parts.port else "")
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return pinned, {"host": host_header}, extensions


def log_entry(record: dict[str, Any]) -> dict[str, Any]:
    """One delivery as GET /jobs/{id}/webhooks shows it."""
    def at(field: str) -> str | None:
        value = record.get(field)
        return iso_z(ms_to_datetime(int(value))) if isinstance(value, int | float) else None

    return {"id": record["id"], "type": record["type"], "attempts": int(record["attempts"]),
            "last_status": record.get("last_status"), "delivered_at": at("delivered_at"),
            "next_attempt_at": at("next_attempt_at"), "gave_up_at": at("gave_up_at")}


def _as_of(view: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The view as the event saw it: started/progress carry the counts of their moment."""
    snapshot = record.get("snapshot") or {}
    if record["type"] == "job.completed" or not snapshot.get("status"):
        return view
    done, failed = int(snapshot["done"]), int(snapshot["failed"])
    total = int(view.get("total_items") or 0)
    view = {**view, "status": snapshot["status"], "done_items": done, "failed_items": failed,
            "progress": round((done + failed) / total, 4) if total else 0.0}
    if snapshot["status"] != JobState.QUEUED:
        view["queue_position"] = None
    return view


@dataclass
class WebhookSender:
    outbox: Outbox
    settings: Settings
    view: JobView
    client: httpx.AsyncClient

    @property
    def claim_ms(self) -> int:
        # Longer than one attempt can take, so a live sender never sees its claim run out.
        return int(self.settings.webhook_timeout * 1000) + 10_000

    async def deliver_bucket(self, bucket: int, limit: int = 200) -> int:
        """Claims and attempts the bucket's due deliveries; returns how many were attempted."""
        ids = await self.outbox.claim(bucket, limit=limit, claim_ms=self.claim_ms)
        gate = asyncio.Semaphore(DELIVERIES_IN_FLIGHT)

        async def one(delivery_id: str) -> bool:
            async with gate:
                try:
                    return await self.attempt(delivery_id)
                except Exception:  # one broken delivery never stops the others
                    log.exception("webhook delivery %s failed", delivery_id)
                    return False

        return sum(await asyncio.gather(*(one(i) for i in ids)))

    async def deliver_once(self) -> int:
        """One pass over the buckets in use (a delivery exists only where a user does), so
        an idle pass costs what the users cost, not TOLLGATE_BUCKETS."""
        total = 0
        for bucket in await DueIndex(self.outbox.core).buckets_in_use():
            total += await self.deliver_bucket(bucket)
        return total

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        """Delivers until `stop` is set; its own loop, so a hanging receiver never holds up
        the flush of finished jobs."""
        while not stop.is_set():
            try:
                sent = await self.deliver_once()
            except Exception:  # Redis away for a moment: every step is redoable
                log.exception("webhook pass failed")
                sent = 0
            if not sent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)

    async def _body(self, record: dict[str, Any]) -> bytes | None:
        if record.get("body"):
            return str(record["body"]).encode()
        view = await self.view(record["owner"], record["job_id"])
        if view is None:
            return None
        at = int((record.get("snapshot") or {}).get("at") or record["created_at"])
        payload = {"type": record["type"], "timestamp": iso_z(ms_to_datetime(at)),
                   "data": _as_of(view, record)}
        return json.dumps(payload, separators=(",", ":")).encode()

    async def attempt(self, delivery_id: str) -> bool:
        raw = await self.outbox.record(delivery_id)
        if raw is None:  # the log expired or was never written: drop the due entry
            with contextlib.suppress(NotFound):
                await self.outbox.result(delivery_id, "gave_up", attempts_seen=0,
                                         status=None, log_ttl_ms=1)
            return False
        record: dict[str, Any] = json.loads(raw)
        if record.get("delivered_at") or record.get("gave_up_at"):
            return False
        seen = int(record["attempts"])
        body = await self._body(record)
        status: int | None = None
        if body is not None:
            status = await self._post(record["url"], delivery_id, body, record["owner"])
        if status is not None and 200 <= status < 300:
            outcome, next_ms = "delivered", 0
        elif seen >= len(RETRY_DELAYS_S) or body is None:
            outcome, next_ms = "gave_up", 0
        else:
            outcome, next_ms = "failed", now_ms() + RETRY_DELAYS_S[seen] * 1000
        code = await self.outbox.result(
            delivery_id, outcome, attempts_seen=seen, status=status, next_attempt_ms=next_ms,
            body="" if record.get("body") or body is None else body.decode(),
            log_ttl_ms=self.settings.webhook_log_ttl * 1000)
        return code is Code.OK

    async def _post(self, url: str, msg_id: str, body: bytes, owner: str) -> int | None:
        """The answer's status, or None when nothing answered in time (or the URL is now
        refused)."""
        try:
            address = await resolve_allowed(url, self.settings.webhook_allow_private)
        except WebhookUrlNotAllowed as exc:
            log.warning("webhook %s not sent: %s", msg_id, exc.detail)
            return None
        secret = await self.outbox.secret(owner, new_secret())
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
