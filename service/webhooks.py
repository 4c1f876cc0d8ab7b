"""Webhooks: the URL check, Standard Webhooks signing, and delivery from the outbox.

The Lua scripts record each event in the same call as the change (lua/includes/outbox.lua);
`WebhookSender` claims due deliveries per bucket, POSTs them concurrently (a global cap and
one per endpoint, so a hanging receiver holds only its own slots) and records each
attempt's outcome (lua/webhook_result.lua). A sender that dies mid-attempt loses nothing:
the claim runs out and the delivery is due again, with the same `webhook-id`.

A URL is checked when the job is created and again on every attempt, on the address it
resolves to then; the request goes to that checked address (Host header and TLS server name
set from the URL), so a DNS answer that changes after the check cannot point it elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
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
T = TypeVar("T")

EVENTS = ("started", "progress", "completed")
DEFAULT_EVENTS = ("completed",)
# Seconds before each retry: the first within 10 s, the last attempt ~39.7 h after the first.
RETRY_DELAYS_S = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800, 28800, 28800)
# Deliveries one process holds (in flight, or claimed and waiting for their endpoint), at
# most PER_ENDPOINT attempts in flight to one host:port, and Redis calls in flight from
# the sender (below any pool: a full pool fails on Cluster and the embedded server).
MAX_IN_FLIGHT = 64
PER_ENDPOINT = 4
REDIS_IN_FLIGHT = 16
CLAIM_LIMIT = 200
MIN_WAIT_S = 0.1  # the least a delivery put back for a full endpoint waits
MIN_PASS_S = 0.05  # passes that claim something come at most this often
REMEMBERED_IDS = 10_000
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


# IPv6 ranges whose addresses carry an IPv4 address that a gateway on the way may reach:
# IPv4-compatible (::a.b.c.d), NAT64 (RFC 6052, RFC 8215), 6to4 and Teredo. Refused even
# where private targets are allowed: a receiver never needs them, and on a NAT64 network they
# lead to internal and metadata addresses.
EMBEDDED_IPV4_NETWORKS = tuple(ipaddress.IPv6Network(net) for net in (
    "::/96", "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32"))


def address_allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip == ipaddress.IPv6Address("::1"):
            pass  # loopback, decided below like 127.0.0.1
        elif any(ip in network for network in EMBEDDED_IPV4_NETWORKS):
            return False
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
    try:  # a name the resolver cannot encode ('a..b', a label over 63 characters)
        parts.hostname.encode("idna")
    except UnicodeError as exc:
        raise WebhookUrlNotAllowed(f"the webhook host {parts.hostname!r} is not a valid "
                                   "host name") from exc
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
            "next_attempt_at": at("next_attempt_at"), "gave_up_at": at("gave_up_at"),
            "redelivery_of": record.get("redelivery_of")}


def redelivery(original: dict[str, Any], delivery_id: str, now: int) -> dict[str, Any]:
    """A new delivery of the same event (its body as first sent, when it was sent): one
    attempt, with its own webhook-id, signed with the secret of the moment it is made."""
    record = {"id": delivery_id, "job_id": original["job_id"], "owner": original["owner"],
              "type": original["type"], "url": original["url"],
              "snapshot": original.get("snapshot") or {}, "created_at": now, "attempts": 0,
              "next_attempt_at": now, "max_attempts": 1, "redelivery_of": original["id"]}
    if original.get("body"):
        record["body"] = original["body"]
    return record


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
class _Endpoint:
    """One receiver (host:port): its attempts in flight, the claimed deliveries waiting
    for one of its slots, and how long its attempts take (a moving average)."""
    active: int = 0
    waiting: deque[tuple[str, dict[str, Any]]] = field(default_factory=deque)
    latency_s: float = 0.1


def endpoint_of(url: str) -> str:
    try:
        _, host, port = _split(url)
    except WebhookUrlNotAllowed:
        return url  # refused at its attempt; its own slot all the same
    return f"{host.lower()}:{port}"


@dataclass
class WebhookSender:
    """Delivers concurrently across buckets. A pass claims each bucket's due deliveries,
    never more than the free slots (`max_in_flight`, deliveries held by this process), and
    starts each at once when its endpoint has fewer than `per_endpoint` attempts in flight;
    otherwise it waits behind that endpoint (at most `per_endpoint` of them, so its claim
    covers the wait: `claim_ms`), or goes back to the due set for a moment. So a hanging
    receiver holds only its own slots, and nobody waits for a pass over every bucket. Every
    Redis call goes through one gate of `redis_in_flight`."""
    outbox: Outbox
    settings: Settings
    view: JobView
    client: httpx.AsyncClient
    max_in_flight: int = MAX_IN_FLIGHT
    per_endpoint: int = PER_ENDPOINT
    redis_in_flight: int = REDIS_IN_FLIGHT
    _endpoints: dict[str, _Endpoint] = field(default_factory=dict, init=False, repr=False)
    # delivery id -> endpoint, so a delivery claimed again while its endpoint is full goes
    # back without its record being read
    _endpoint_ids: OrderedDict[str, str] = field(default_factory=OrderedDict, init=False,
                                                 repr=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)
    _held: int = field(default=0, init=False, repr=False)
    _attempted: int = field(default=0, init=False, repr=False)
    _passes: int = field(default=0, init=False, repr=False)
    _next_due: float | None = field(default=None, init=False, repr=False)
    _freed: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _gate: asyncio.Semaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._gate = asyncio.Semaphore(self.redis_in_flight)

    @property
    def claim_ms(self) -> int:
        # One attempt (resolve, then POST) takes at most `attempt_s`; a claimed delivery
        # waits for at most one attempt of each of its endpoint's slots, then makes its own:
        # a live sender never sees its claim run out.
        attempt_s = self.settings.webhook_timeout + RESOLVE_TIMEOUT_S
        return int(2 * attempt_s * 1000) + 10_000

    @property
    def held(self) -> int:
        """Deliveries this process holds: in flight or waiting for their endpoint."""
        return self._held

    async def _redis(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._gate:
            return await call()

    def _release(self, n: int = 1) -> None:
        self._held -= n
        self._freed.set()

    async def _free_slots(self) -> int:
        while self._held >= self.max_in_flight:
            self._freed.clear()
            await self._freed.wait()
        return self.max_in_flight - self._held

    async def deliver_bucket(self, bucket: int, limit: int = CLAIM_LIMIT) -> int:
        """Claims up to `limit` of the bucket's due deliveries (never more than the free
        slots) and starts them; returns how many it claimed. Does not wait for them."""
        want = min(limit, await self._free_slots())
        self._held += want  # taken before the claim, so a second pass cannot overclaim
        try:
            ids: list[str] = await self._redis(lambda: self.outbox.claim(
                bucket, limit=want, claim_ms=self.claim_ms))
        except BaseException:
            self._release(want)
            raise
        self._release(want - len(ids))
        if ids:
            await self._dispatch(bucket, ids)
        return len(ids)

    async def _dispatch(self, bucket: int, ids: list[str]) -> None:
        back: list[tuple[str, float]] = []
        unread: list[str] = []
        for delivery_id in ids:
            known = self._endpoints.get(self._endpoint_ids.get(delivery_id, ""))
            if known is not None and self._full(known):
                back.append((delivery_id, self._wait_s(known)))
            else:
                unread.append(delivery_id)
        raws = await asyncio.gather(
            *(self._redis(functools.partial(self.outbox.record, i)) for i in unread),
            return_exceptions=True)
        for delivery_id, raw in zip(unread, raws, strict=True):
            if isinstance(raw, BaseException):  # its claim runs out: due again then
                log.warning("webhook %s: record not read (%s)", delivery_id, raw)
                self._release()
                continue
            if raw is None:  # the log expired or was never written: drop the due entry
                self._release()
                with contextlib.suppress(NotFound):
                    await self._redis(functools.partial(
                        self.outbox.result, delivery_id, "gave_up", attempts_seen=0,
                        status=None, log_ttl_ms=1))
                continue
            record: dict[str, Any] = json.loads(raw)
            if record.get("delivered_at") or record.get("gave_up_at"):
                self._release()
                continue
            key = endpoint_of(str(record["url"]))
            self._remember(delivery_id, key)
            endpoint = self._endpoints.setdefault(key, _Endpoint())
            if endpoint.active < self.per_endpoint:
                endpoint.active += 1
                task = asyncio.create_task(self._deliver(key, endpoint, delivery_id, record),
                                           name=f"webhook {delivery_id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif len(endpoint.waiting) < self.per_endpoint:
                endpoint.waiting.append((delivery_id, record))
            else:
                back.append((delivery_id, self._wait_s(endpoint)))
        if back:
            self._release(len(back))
            await self._put_back(bucket, back)

    def _full(self, endpoint: _Endpoint) -> bool:
        return (endpoint.active >= self.per_endpoint
                and len(endpoint.waiting) >= self.per_endpoint)

    def _wait_s(self, endpoint: _Endpoint) -> float:
        """About when the endpoint has a slot for one more: its queue over its slots, times
        how long its attempts take (a hanging one: its timeout)."""
        queued = endpoint.active + len(endpoint.waiting)
        estimate = queued / self.per_endpoint * endpoint.latency_s
        return min(max(estimate, MIN_WAIT_S), self.settings.webhook_timeout)

    def _remember(self, delivery_id: str, key: str) -> None:
        self._endpoint_ids[delivery_id] = key
        self._endpoint_ids.move_to_end(delivery_id)
        while len(self._endpoint_ids) > REMEMBERED_IDS:
            self._endpoint_ids.popitem(last=False)

    async def _put_back(self, bucket: int, back: list[tuple[str, float]]) -> None:
        """Deliveries whose endpoint is full go back to the due set, due when it may have a
        slot (XX: one that was recorded meanwhile is not added again)."""
        now = now_ms()
        args: list[str | int] = []
        for delivery_id, wait_s in back:
            args += [now + int(wait_s * 1000), delivery_id]
        key = self.outbox.keys.bucket(bucket).webhooks
        await self._redis(lambda: self.outbox.core.runner.execute_command(
            "ZADD", key, "XX", *args))
        due = asyncio.get_running_loop().time() + min(wait_s for _, wait_s in back)
        self._next_due = due if self._next_due is None else min(self._next_due, due)

    async def _deliver(self, key: str, endpoint: _Endpoint, delivery_id: str,
                       record: dict[str, Any]) -> None:
        """One of the endpoint's slots: attempts the delivery, then each that waits for
        the endpoint, until none is left."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                began = loop.time()
                try:
                    if await self.attempt(delivery_id, record):
                        self._attempted += 1
                except Exception:  # one broken delivery never stops the others
                    log.exception("webhook delivery %s failed", delivery_id)
                endpoint.latency_s = 0.7 * endpoint.latency_s + 0.3 * (loop.time() - began)
                self._release()
                if not endpoint.waiting:
                    break
                delivery_id, record = endpoint.waiting.popleft()
        except BaseException:  # cancelled mid-attempt (shutdown): their claims run out
            self._release(1 + len(endpoint.waiting))
            endpoint.waiting.clear()
            raise
        finally:
            endpoint.active -= 1
            if not endpoint.active and not endpoint.waiting:
                self._endpoints.pop(key, None)

    async def _pass(self) -> int:
        """Claims from every bucket in use (a delivery exists only where a user does, so an
        idle pass costs what the users cost, not TOLLGATE_BUCKETS), starting one bucket
        further each pass; returns how many it claimed. A bucket that fails does not stop
        the others; the first failure is raised after them."""
        buckets = await self._redis(DueIndex(self.outbox.core).buckets_in_use)
        if not buckets:
            return 0
        start = self._passes % len(buckets)
        self._passes += 1
        claimed, failure = 0, None
        for bucket in buckets[start:] + buckets[:start]:
            try:
                claimed += await self.deliver_bucket(bucket)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return claimed

    async def drain(self, grace_s: float | None = None) -> None:
        """Waits for every delivery this process holds; past `grace_s`, cancels them."""
        while self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            if pending and grace_s is not None:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return

    async def deliver_once(self) -> int:
        """One pass, then waits for its deliveries; returns how many attempts were
        recorded."""
        before = self._attempted
        try:
            await self._pass()
        finally:
            await self.drain()
        return self._attempted - before

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        """Delivers until `stop` is set; its own loop, so a hanging receiver never holds up
        the flush of finished jobs. A pass never waits for deliveries; the next comes at
        once when this one claimed some (at most every MIN_PASS_S), else after `interval`
        or when a delivery put back is due."""
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                began = loop.time()
                self._next_due = None
                try:
                    claimed = await self._pass()
                except Exception:  # Redis away for a moment: every step is redoable
                    log.exception("webhook pass failed")
                    claimed = 0
                pause = MIN_PASS_S if claimed else interval
                if self._next_due is not None:
                    pause = min(pause, self._next_due - loop.time())
                pause -= loop.time() - began
                if pause > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=pause)
        finally:
            await self.drain(grace_s=self.settings.webhook_timeout + 1)

    async def _body(self, record: dict[str, Any]) -> bytes | None:
        if record.get("body"):
            return str(record["body"]).encode()
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
        sent = "" if record.get("body") or body is None else body.decode()
        code = await self._redis(lambda: self.outbox.result(
            delivery_id, outcome, attempts_seen=seen, status=status, next_attempt_ms=next_ms,
            body=sent, log_ttl_ms=self.settings.webhook_log_ttl * 1000))
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
