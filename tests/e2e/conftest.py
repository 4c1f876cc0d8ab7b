"""End to end: the real API over HTTP, real `tollgate worker` subprocesses, real services."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from service.settings import Settings
from tests.api.conftest import api, real_settings, settings_overrides  # noqa: F401
from tests.api.scheduling import drain

ROOT = Path(__file__).resolve().parents[2]


# One drain at a time: a second would find the queues locked and hand nothing.
DRAINING = threading.Lock()

def worker_env(settings: Settings, processor: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"TOLLGATE_{name.upper()}"] = str(value)
    env["TOLLGATE_PROCESSOR"] = processor
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and all its descendants (RQ puts its work-horse in a process group
    of its own): as when the machine dies, no cleanup code runs anywhere."""
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)


class Workers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, IO[bytes]] = {}

    def start(self, processor: str, *, burst: bool, model: str | None = None,
              **extra: str) -> subprocess.Popen[bytes]:
        """A worker on the settings' queue, or on the queue of `model` (with its processor)."""
        serves = ["--model", model] if model else ["--queue", self.settings.queue_name]
        args = [sys.executable, "-m", "service.cli.main", "worker", *serves,
                *(["--burst"] if burst else [])]
        # A file, not a pipe: nobody reads a long-running worker's output until it ends.
        log = tempfile.TemporaryFile()  # noqa: SIM115  (closed by stop_all)
        proc = subprocess.Popen(args, env=worker_env(self.settings, processor, **extra),
                                cwd=ROOT, start_new_session=True, stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        log = self.logs[proc.pid]
        log.seek(0)
        return log.read().decode(errors="replace")

    def run_burst(self, processor: str, timeout: float = 120, model: str | None = None,
                  **extra: str) -> str:
        with DRAINING:  # a burst worker stops on an empty queue: hand it the work first
            asyncio.run(drain(self.settings))
        proc = self.start(processor, burst=True, model=model, **extra)
        proc.wait(timeout=timeout)
        assert proc.returncode == 0, self.output(proc)
        return self.output(proc)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        kill_tree(proc)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)
            self.logs[proc.pid].close()


@pytest.fixture
def workers(real_settings: Settings) -> Iterator[Workers]:  # noqa: F811
    pool = Workers(real_settings)
    yield pool
    pool.stop_all()
