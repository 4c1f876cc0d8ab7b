"""Slow clients: a request body that does not arrive in time is a 408, not a held task.

Neither granian nor uvicorn bounds the time a client may take to send a body (both bound
headers and idle keep-alive connections; see service.cli.serve), so the app does: one
deadline for the whole body, counted from the first read, so a client trickling a byte at a
time cannot stretch it. Reads after the body (a streaming response waiting for the client
to leave) are not timed.

A body is read on the strict terms (64 KiB, 5 s) until the request has shown valid
credentials: a user token (the JWT middleware, which runs first, sets the user), or what a
public route checks itself before it reads (a callback token, a signed URL) and then
`vouch`es for. So a client with nothing valid cannot hold a request slot for long.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from service.errors import PayloadTooLarge, RequestTimeout

UNVOUCHED_BODY_BYTES = 64 * 1024
UNVOUCHED_BODY_S = 5.0
_VOUCHED = "tollgate.vouched"


def vouch(scope: Scope) -> None:
    """The request has shown valid credentials: its body is read on the usual terms."""
    cast(dict[str, Any], scope)[_VOUCHED] = True


def _vouched(scope: Scope) -> bool:
    return scope.get("user") is not None or _VOUCHED in scope


def body_deadline_middleware(app: ASGIApp, timeout_s: float) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        # One timer per request (call_later), not an asyncio.timeout per read: about a third
        # of the cost on the callback endpoint's single-read bodies.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        timer: asyncio.TimerHandle | None = None
        waiting = expired = body_done = False
        limit_s, max_bytes, received = timeout_s, 0, 0

        def expire() -> None:
            nonlocal expired
            expired = True
            if waiting and task is not None:
                task.cancel()  # only while it waits for the client, never elsewhere

        async def receive_in_time() -> ReceiveMessage:
            nonlocal timer, waiting, body_done, limit_s, max_bytes, received
            if body_done:
                return await receive()
            if timer is None:
                if not _vouched(scope):
                    limit_s, max_bytes = min(timeout_s, UNVOUCHED_BODY_S), UNVOUCHED_BODY_BYTES
                timer = loop.call_later(limit_s, expire)
            if expired:
                raise RequestTimeout(f"the body did not arrive within {limit_s:g} s")
            waiting = True
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not expired or task is None:
                    raise
                task.uncancel()
                raise RequestTimeout(f"the body did not arrive within {limit_s:g} s") from None
            finally:
                waiting = False
            if max_bytes and message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise PayloadTooLarge(f"a request without valid credentials may send at "
                                          f"most {max_bytes} bytes")
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
                timer.cancel()
            return message

        try:
            await app(scope, receive_in_time, send)
        finally:
            if timer is not None:
                timer.cancel()

    return middleware
