"""One client may not hold all of an API process's request slots.

A request counts against its client from the moment the app gets it until its answer is
sent (a slow body, an SSE stream, a `Prefer: wait` all count). A client past
`TOLLGATE_CLIENT_MAX_IN_FLIGHT` requests in flight in this process is answered after a
1 s pause, without reading its body: 429 `too_many_in_flight` with `Retry-After: 1` and
`Connection: close`. The client is the peer's address (an IPv6 peer's /64, which one host
is usually given), counted per process in memory: no Redis call.

This bounds what reaches the app. Connections that never send a request (idle ones, or a
request head that never ends) are the server's to bound: granian holds one slot per
connection, so `tollgate api` gives it `TOLLGATE_MAX_CONNECTIONS` of them per process and
closes a connection whose head has not arrived within `TOLLGATE_KEEPALIVE_TIMEOUT`
(service.cli.serve).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json

from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)

from service.errors import TooManyInFlight

REFUSAL_PAUSE_S = 1.0
_BODY = json.dumps({
    "type": f"https://tollgate.dev/problems/{TooManyInFlight.code}",
    "title": TooManyInFlight.title, "status": TooManyInFlight.status,
    "code": TooManyInFlight.code,
    "detail": "this client has too many requests in flight; retry after the time in "
              "Retry-After"}).encode()
_HEADERS = [(b"content-type", b"application/problem+json"),
            (b"content-length", str(len(_BODY)).encode()),
            (b"retry-after", b"1"), (b"connection", b"close")]


def client_key(scope: Scope) -> str:
    """The client a request counts against: the peer's IPv4 address, or its IPv6 /64."""
    client = scope.get("client")
    host = client[0] if client else ""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


def client_cap_middleware(app: ASGIApp, max_in_flight: int) -> ASGIApp:
    in_flight: dict[str, int] = {}

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or max_in_flight <= 0:
            await app(scope, receive, send)
            return
        key = client_key(scope)
        held = in_flight.get(key, 0)
        if held >= max_in_flight:
            # Answered after a pause: a client that asks again at once cannot turn the
            # refusals into a flood (the pause holds only a sleeping task, not a slot of its).
            await asyncio.sleep(REFUSAL_PAUSE_S)
            start: HTTPResponseStartEvent = {"type": "http.response.start",
                                             "status": TooManyInFlight.status,
                                             "headers": _HEADERS}
            await send(start)
            body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": _BODY,
                                           "more_body": False}
            await send(body)
            return
        in_flight[key] = held + 1
        try:
            await app(scope, receive, send)
        finally:
            left = in_flight[key] - 1
            if left:
                in_flight[key] = left
            else:
                del in_flight[key]

    return middleware
