"""A processor whose output is the params it received, so a test can see what reached it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from workers.processors import Item, Output


def thawed(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: thawed(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thawed(item) for item in value]
    return value


def echo_params(items: list[Item]) -> list[Output]:
    return [Output(item.index, json.dumps({
        "params": thawed(item.params), "read_only": type(item.params).__name__,
        "input": item.data.decode("latin-1")}).encode(), "application/json")
        for item in items]
