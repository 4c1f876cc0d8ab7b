"""Slow clients: a request body that does not arrive in time is a 408, not a held task.

Neither granian nor uvicorn bounds the time a client may take to send a body (both bound
headers and idle keep-alive connections; see service.cli.serve), so the app does: one
deadline for the whole body, counted from the first read, so a client trickling a byte at a
time cannot stretch it. Reads after the body (a streaming response waiting for the client
to leave) are not timed.
"""

from __future__ import annotations

import asyncio

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from service.errors import RequestTimeout


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

        def expire() -> None:
            nonlocal expired
            expired = True
            if waiting and task is not None:
                task.cancel()  # only while it waits for the client, never elsewhere

        async def receive_in_time() -> ReceiveMessage:
            nonlocal timer, waiting, body_done
            if body_done:
                return await receive()
            if timer is None:
                timer = loop.call_later(timeout_s, expire)
            if expired:
                raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s")
            waiting = True
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not expired or task is None:
                    raise
                task.uncancel()
                raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
            finally:
                waiting = False
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
