"""A user's open event streams: a zset of stream id -> lease deadline in the user's bucket
(taken and renewed by lua/stream_take.lua), so every API process counts the same slots."""

from __future__ import annotations

from service.state.store import Core


async def give_back_stream_slot(core: Core, user_id: str, stream_id: str) -> None:
    """The slot back before its lease ends."""
    await core.runner.execute_command("ZREM", core.keys.user(user_id).streams, stream_id)
