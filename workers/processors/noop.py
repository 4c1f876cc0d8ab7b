"""Processors that do no real work: for benchmarks (passthrough) and failure tests."""

from __future__ import annotations

from workers.processors import Item, Output


def passthrough(items: list[Item]) -> list[Output]:
    return [Output(item.index, item.data, item.content_type) for item in items]


def fail_odd(items: list[Item]) -> list[Output]:
    """Raises for any batch holding an odd index, so the worker's item-by-item retry runs and
    exactly the odd items end failed."""
    odd = [item.index for item in items if item.index % 2]
    if odd:
        raise ValueError(f"odd item index {odd[0]} fails by design")
    return passthrough(items)
