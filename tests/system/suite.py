"""What the system tests share: the services a set-up starts from, and the verdict."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.conftest import _port_open, need
from tests.system.scenario import Plan, run_setup, verdict


def needs_services(*, postgres: bool) -> None:
    need("redis-server", shutil.which("redis-server") is not None, "it is not on PATH")
    need("redis-cli", shutil.which("redis-cli") is not None, "it is not on PATH")
    if postgres:
        need("PostgreSQL", _port_open("127.0.0.1", 5432), "nothing listens on 127.0.0.1:5432")


async def run_and_judge(name: str) -> None:
    """Runs the set-up in a folder of its own, kept (logs and all) when a check fails."""
    folder = Path(tempfile.mkdtemp(prefix=f"tollgate-system-{name}-"))
    main, fault = await run_setup(name, folder, Plan.from_env())
    text = verdict(name, main, fault)
    print(text)
    if main.failures or fault.failures:
        raise AssertionError(f"{text}\nlogs kept in {folder}")
    shutil.rmtree(folder, ignore_errors=True)
