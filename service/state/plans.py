"""Plan limits: the one table every limit is read from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    rule_slots: int
    concurrency: int
    # POST /jobs `priority` values the plan may use (docs/scheduling.md)
    priorities: frozenset[str] = frozenset({"normal", "low"})


PLANS: dict[str, Plan] = {
    "free": Plan("free", rule_slots=2, concurrency=1),
    "pro": Plan("pro", rule_slots=20, concurrency=10,
                priorities=frozenset({"high", "normal", "low"})),
}

DEFAULT_PLAN = "free"


def plan_named(name: str) -> Plan:
    try:
        return PLANS[name]
    except KeyError:
        raise ValueError(f"unknown plan {name!r}; known: {', '.join(PLANS)}") from None
