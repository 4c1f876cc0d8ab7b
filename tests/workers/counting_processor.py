"""Processors for the worker lifecycle tests: they write what ran, in which process, to the
file that TOLLGATE_TEST_TRACE names (the worker runs in a subprocess)."""

from __future__ import annotations

import os
import time

from workers.processors import Item, Output
from workers.processors.noop import passthrough


def _trace(event: str) -> None:
    with open(os.environ["TOLLGATE_TEST_TRACE"], "a") as out:
        out.write(f"{event} {os.getpid()}\n")


class Counting:
    def setup(self) -> None:
        _trace("setup")

    def __call__(self, items: list[Item]) -> list[Output]:
        _trace("batch")
        return passthrough(items)


def slow_first_item(items: list[Item]) -> list[Output]:
    """Outlives any short RQ timeout on a batch holding item 0; fast otherwise."""
    if any(item.index == 0 for item in items):
        for _ in range(600):
            time.sleep(0.05)
    return passthrough(items)
