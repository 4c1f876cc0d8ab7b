"""One set-up's whole run: the workload, the books, the fault phase, the books again.
The system tests and `python -m bench.soak` run this."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tests.system.books import Report, check_books
from tests.system.harness import Timing
from tests.system.receivers import Receivers
from tests.system.stacks import SETUPS
from tests.system.workload import Workload


@dataclass(frozen=True, slots=True)
class Plan:
    seconds: float
    clients: int
    fault_seconds: float
    fault_clients: int

    @classmethod
    def from_env(cls) -> Plan:
        """TOLLGATE_SYSTEM_SECONDS (60 in CI) for the main phase; the fault phase runs a
        third of it (at least 20 s, and until every fault is done) with half the clients."""
        seconds = float(os.environ.get("TOLLGATE_SYSTEM_SECONDS", "60"))
        clients = int(os.environ.get("TOLLGATE_SYSTEM_CLIENTS", "3"))
        return cls(seconds, clients, max(20.0, seconds / 3), max(2, clients // 2))


async def run_setup(name: str, folder: Path, plan: Plan) -> tuple[Report, Report]:
    timing = Timing()
    receivers = Receivers(hang_s=timing.webhook_timeout + 2)
    receivers.start()
    try:
        with SETUPS[name](folder, timing) as system:
            work = Workload(system.stack, receivers)
            try:
                for feature in work.features:
                    if hasattr(feature, "start"):
                        await feature.start(work)
                await work.run(plan.seconds, plan.clients, "main", [])
                main = await check_books(system, work)
                main.figures["log folder"] = str(system.stack.logdir)
                await work.run(plan.fault_seconds, plan.fault_clients, "fault", system.faults)
                fault = await check_books(system, work)
                fault.figures["faults"] = [label for label, _ in system.faults]
            finally:
                await work.close()
    finally:
        receivers.stop()
    return main, fault


def verdict(name: str, main: Report, fault: Report) -> str:
    return (f"== {name}: main phase ==\n{main.text()}\n"
            f"== {name}: after the faults ==\n{fault.text()}")
