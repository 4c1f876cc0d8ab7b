"""The two things the async client does its own way: pausing, and uploading all files at
once. io_sync.py is the blocking twin that sync.py, generated from aio.py, imports instead."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def each(items: Iterable[T], action: Callable[[T], Awaitable[None]]) -> None:
    """`action` on every item, all at the same time; the first failure is raised."""
    await asyncio.gather(*(action(item) for item in items))
