"""The system suite's second model: slow enough that a kill lands mid-batch, and it fails
the items whose input says so (a failed item is not charged). An input that starts with
`flaky` fails the first time it runs and succeeds after (a marker file per input in the
worker's folder): a retry of its job (POST /jobs/{id}/retry) then charges for it."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from workers.processors import Item, Output

ITEM_SECONDS = 0.1
SEEN = Path("flaky-seen")  # relative: the worker runs in the set-up's own folder


def _first_run(data: bytes) -> bool:
    SEEN.mkdir(exist_ok=True)
    try:
        (SEEN / hashlib.sha256(data).hexdigest()).touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


def slow_echo(items: list[Item]) -> list[Output]:
    time.sleep(ITEM_SECONDS * len(items))
    return [Output.failed(item.index, "asked to fail") if item.data.startswith(b"fail")
            else Output.failed(item.index, "flaky: fails the first time")
            if item.data.startswith(b"flaky") and _first_run(item.data)
            else Output(item.index, item.data, item.content_type) for item in items]
