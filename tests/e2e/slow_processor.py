"""A processor that takes its time, so a test can kill or cancel a job mid-flight."""

from __future__ import annotations

import os
import time

from workers.processors import Item, Output


def one_per_second(items: list[Item]) -> list[Output]:
    time.sleep(float(os.environ.get("TOLLGATE_TEST_ITEM_SECONDS", "1")) * len(items))
    return [Output(item.index, item.data, item.content_type) for item in items]
