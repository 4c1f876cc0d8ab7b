"""The system suite's second model: slow enough that a kill lands mid-batch, and it fails
the items whose input says so (a failed item is not charged)."""

from __future__ import annotations

import time

from workers.processors import Item, Output

ITEM_SECONDS = 0.1


def slow_echo(items: list[Item]) -> list[Output]:
    time.sleep(ITEM_SECONDS * len(items))
    return [Output.failed(item.index, "asked to fail") if item.data.startswith(b"fail")
            else Output(item.index, item.data, item.content_type) for item in items]
