"""Features that join the system suite's workload and its books, one module each.

A module in this package defines `FEATURE`, an object with:

- `share: float`: the share of a client's turns it takes (each feature is rolled in turn
  before the base mix of runs, cancels, holds and grants);
- `async def act(work: Workload, user: str) -> None`: one turn of a client. Jobs go through
  `work.run_job(user, kind, extra=..., auth=...)` (or `work.create`), so the books hold them
  to the same account as every other job;
- `async def check(system: System, work: Workload, report: Report) -> None`: its own checks
  at the books (`report.check(name, problems)`), run after the common ones;
- optionally `async def start(work: Workload) -> None`: once, before the first phase.

Modules are found by name, so features added side by side never edit a shared file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tests.system.books import Report
    from tests.system.stacks import System
    from tests.system.workload import Workload


class Feature(Protocol):
    share: float

    async def act(self, work: Workload, user: str) -> None: ...

    async def check(self, system: System, work: Workload, report: Report) -> None: ...


def load_features() -> list[Any]:
    """Every module's FEATURE, in name order."""
    found = []
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        if hasattr(loaded, "FEATURE"):
            found.append(loaded.FEATURE)
    return found
