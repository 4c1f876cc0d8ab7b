"""Slow clients: a request body that does not arrive in time is a 408, not a held task.

Neither granian nor uvicorn bounds the time a client may take to send a body (both bound
headers and idle keep-alive connections; see service.cli.serve), so the app does: one
deadline for the whole body, counted from the first read, so a client trickling a byte at a
time cannot stretch it. Reads after the body (a streaming response waiting for the client
to leave) are not timed.
"""

from __future__ import annotations

import asyncio
import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from service.errors import TollgateError


class BodyTimeout(TollgateError):
    status, code, title = 408, "request_timeout", "The request body did not arrive in time"


def body_deadline_middleware(app: ASGIApp, timeout_s: float) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        deadline: float | None = None
        body_done = False

        async def receive_in_time() -> ReceiveMessage:
            nonlocal deadline, body_done
            if body_done:
                return await receive()
            if deadline is None:
                deadline = time.monotonic() + timeout_s
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(f"the body did not arrive within {timeout_s:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await app(scope, receive_in_time, send)

    return middleware
