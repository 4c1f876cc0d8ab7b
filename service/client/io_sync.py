"""The blocking twin of io_async.py, for sync.py: pausing, and uploading one file after the
other."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def each(items: Iterable[T], action: Callable[[T], None]) -> None:
    """`action` on every item, one after the other; the first failure is raised."""
    for item in items:
        action(item)
