"""The system suite's long version: `python -m bench.soak --minutes 10`.

Runs the set-ups of tests/system (the real commands as separate processes under the mixed
workload) for N minutes each, then checks the books; then the fault phase (kills, a state
store restarted empty) and the books again. Prints every figure and every broken check;
exits 1 if any check broke. Logs of a failed set-up are kept and their folder printed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from tests.system.scenario import Plan, run_setup, verdict
from tests.system.stacks import SETUPS


async def soak(setups: list[str], plan: Plan) -> int:
    failed = 0
    for name in setups:
        folder = Path(tempfile.mkdtemp(prefix=f"tollgate-soak-{name}-"))
        main, fault = await run_setup(name, folder, plan)
        print(verdict(name, main, fault), flush=True)
        if main.failures or fault.failures:
            failed += 1
            print(f"logs kept in {folder}", flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="main phase of each set-up (the fault phase adds a third)")
    parser.add_argument("--clients", type=int, default=4, help="client tasks (users)")
    parser.add_argument("--setup", choices=[*SETUPS, "all"], default="all")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    plan = Plan(seconds, args.clients, max(20.0, seconds / 3), max(2, args.clients // 2))
    return asyncio.run(soak(list(SETUPS) if args.setup == "all" else [args.setup], plan))


if __name__ == "__main__":
    sys.exit(main())
