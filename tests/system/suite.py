"""What the system tests share: the services a set-up starts from, and the verdict."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.conftest import POSTGRES_DSN, need, postgres_unreachable
from tests.system.scenario import Plan, run_setup, verdict


def needs_services(*, postgres: bool) -> None:
    need("redis-server", shutil.which("redis-server") is not None, "it is not on PATH")
    need("redis-cli", shutil.which("redis-cli") is not None, "it is not on PATH")
    if postgres:
        why = postgres_unreachable(POSTGRES_DSN)
        need("PostgreSQL", why is None, f"{why} (TOLLGATE_TEST_POSTGRES={POSTGRES_DSN})")


async def run_and_judge(name: str) -> None:
    """Runs the set-up in a folder of its own, kept (logs and all) when a check fails."""
    folder = Path(tempfile.mkdtemp(prefix=f"tollgate-system-{name}-"))
    main, fault = await run_setup(name, folder, Plan.from_env())
    text = verdict(name, main, fault)
    print(text)
    if main.failures or fault.failures:
        raise AssertionError(f"{text}\nlogs kept in {folder}")
    shutil.rmtree(folder, ignore_errors=True)
