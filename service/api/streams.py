"""Open streams per user (docs/reference.md, too_many_streams): at most MAX_STREAMS at once.

Each stream holds a slot in its user's bucket (lua/stream_take.lua), a lease renewed while
it runs and given back when it ends, so the count is shared by every API process and a
process that dies leaks its slots only until their leases end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import TypeVar

from service.errors import TooManyStreams
from service.runtime import Runtime
from service.state.streams import give_back_stream_slot

log = logging.getLogger("tollgate.streams")

MAX_STREAMS = 10
LEASE_S = 60.0
RENEW_S = LEASE_S / 3  # a stream yields at least every keep-alive (15 s), renewing on time

T = TypeVar("T")


async def _take(rt: Runtime, user_id: str, stream_id: str) -> bool:
    key = rt.core.keys.user(user_id).streams
    reply = await rt.core.run_named(
        "stream_take", keys={"streams": key},
        args={"stream_id": stream_id, "lease_ms": int(LEASE_S * 1000), "most": MAX_STREAMS})
    return bool(reply["code"] == "ok")


async def take_slot(rt: Runtime, user_id: str) -> str:
    """A new stream's slot id; TooManyStreams (429) when the user has MAX_STREAMS open."""
    stream_id = secrets.token_hex(8)
    if not await _take(rt, user_id, stream_id):
        raise TooManyStreams(f"at most {MAX_STREAMS} event streams may be open at once; "
                             "close one first")
    return stream_id


async def holding_slot(rt: Runtime, user_id: str, stream_id: str,
                       events: AsyncIterator[T]) -> AsyncIterator[T]:
    """`events` while the slot is held: renewed as they go, given back when they end (the
    client left, the job ended or went idle). A renewal refused (the lease had lapsed and
    the slots are taken) ends the stream."""
    renewed = time.monotonic()
    try:
        async for event in events:
            yield event
            if time.monotonic() - renewed >= RENEW_S:
                if not await _take(rt, user_id, stream_id):
                    return
                renewed = time.monotonic()
    finally:
        # Shielded: a cancelled stream (the client left) still gives its slot back; its
        # lease ends it otherwise.
        release = asyncio.ensure_future(give_back_stream_slot(rt.core, user_id, stream_id))
        release.add_done_callback(_quiet)
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
        with contextlib.suppress(Exception):  # logged by _quiet
            await asyncio.shield(release)


def _quiet(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("giving back a stream slot failed: %s", task.exception())
