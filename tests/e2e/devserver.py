"""`tollgate dev` run as a user runs it, for the tests that drive it from outside: in a folder
of its own, on a free port, without any TOLLGATE_* setting, its console in `dev.log`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.e2e.conftest import ROOT, kill_tree


def bare_env() -> dict[str, str]:
    """This process's environment without any TOLLGATE_* setting: the embedded defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def tollgate(*args: str, cwd: Path, env: dict[str, str], timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
    """`tollgate ARGS...`, run to its end, its output captured."""
    return subprocess.run([sys.executable, "-m", "service.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True, slots=True)
class Dev:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def reader_env(self, token: str | None = None) -> dict[str, str]:
        """A reader's shell, as the quickstart sets it up: the venv activated (its commands
        first on PATH) and TG_URL, TG_TOKEN (dev's user token unless given), TG_ADMIN."""
        venv_bin = str(Path(sys.executable).parent)
        return {**self.env, "PATH": venv_bin + os.pathsep + self.env.get("PATH", ""),
                "TG_URL": self.url, "TG_TOKEN": token or self.printed("token"),
                "TG_ADMIN": self.printed("admin")}

    def printed(self, name: str) -> str:
        """The value the banner prints after `name:` (token, admin)."""
        found = re.search(rf"{name}:\s+(\S+)", self.log())
        assert found, self.log()
        return found[1]


@contextmanager
def tollgate_dev(folder: Path, ready_s: float = 60, extra_env: dict[str, str] | None = None
                 ) -> Iterator[Dev]:
    """`tollgate dev` in `folder`, once /ready answers 200; killed (its whole process tree)
    on the way out, whatever happened. `extra_env`: settings to run it with."""
    env = {**bare_env(), **(extra_env or {})}
    port = free_port()
    log_path = folder / "dev.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli.main", "dev",
                                 "--port", str(port)], cwd=folder, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    dev = Dev(proc, port, log_path, env)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            try:
                if httpx.get(f"{dev.url}/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, dev.log()
            time.sleep(0.2)
        yield dev
    finally:
        kill_tree(proc)
