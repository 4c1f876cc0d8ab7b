"""The real processes of a system run: tollgate commands, redis-servers, a database.

Every tollgate process is `python -m service.cli.main ...` in a session of its own, its
stdout and stderr in a file of its own under the run's folder (one file per start, so a
restarted process keeps the log of the one it replaced). Nothing runs in this process but
the test's clients and webhook receivers.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from service.api.auth import issue_token

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_ADMIN = os.environ.get("TOLLGATE_TEST_POSTGRES",
                                "postgresql://postgres@127.0.0.1:5432/test")
# A log line that says something went wrong: logging's ERROR/CRITICAL level or a traceback.
TROUBLE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback \(most recent call last\)")

MODELS_TOML = """\
[models.thumbnail]
processor = "workers.processors.thumbnail:make_thumbnails"
price_per_item = 1
queue = "sys-thumbnail"
batch_size = 4
content_types = ["image/*"]
default = true

[models.slow]
processor = "tests.system.processors:slow_echo"
price_per_item = 2
queue = "sys-slow"
batch_size = 4
"""


@dataclass(frozen=True, slots=True)
class Timing:
    """The settings the checks are measured against (they go into every process's env)."""

    hold_ttl: int = 3
    flush_delay: int = 2
    flusher_interval: float = 1.0
    lease_ttl: int = 5
    webhook_timeout: float = 2.0

    def env(self) -> dict[str, str]:
        return {"TOLLGATE_HOLD_TTL": str(self.hold_ttl),
                "TOLLGATE_FLUSH_DELAY": str(self.flush_delay),
                "TOLLGATE_FLUSHER_INTERVAL": str(self.flusher_interval),
                "TOLLGATE_LEASE_TTL": str(self.lease_ttl),
                "TOLLGATE_WEBHOOK_TIMEOUT": str(self.webhook_timeout),
                "TOLLGATE_WEBHOOK_ALLOW_PRIVATE": "1"}


def free_port() -> int:
    """A free port whose cluster bus port (+10000) is valid too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port + 10000 <= 65535:
            return port


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def base_env() -> dict[str, str]:
    """This environment without any TOLLGATE_* setting, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@dataclass
class Proc:
    """One tollgate command, started again under the same name after a kill."""

    name: str
    args: list[str]
    env: dict[str, str]
    cwd: Path
    logdir: Path
    popen: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    _log: IO[bytes] | None = None

    def start(self) -> None:
        path = self.logdir / f"{self.name}.{len(self.logs) + 1}.log"
        self.logs.append(path)
        self._log = path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "service.cli.main", *self.args], cwd=self.cwd, env=self.env,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL to its whole process group: no cleanup code runs anywhere."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._close()

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        self.kill()

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def text(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs)


class RedisNode:
    """A redis-server of the test's own without persistence: a restart comes back empty
    (a cluster node keeps its nodes.conf, so it rejoins with its slots)."""

    def __init__(self, folder: Path, *, cluster: bool = False) -> None:
        self.port = free_port()
        self.dir = folder / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not on PATH"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir)]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "2000"]
        with (self.dir / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart_empty(self) -> None:
        self.kill()
        for leftover in self.dir.iterdir():
            if leftover.name.startswith(("dump", "appendonly")):
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
        self.start()

    def cli(self, *args: str) -> str:
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is not on PATH"
        return subprocess.run([cli, "-p", str(self.port), *args], capture_output=True,
                              text=True, timeout=30).stdout


class RedisCluster:
    """Three primaries, no replicas, on free ports."""

    def __init__(self, folder: Path) -> None:
        self.nodes = [RedisNode(folder, cluster=True) for _ in range(3)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        assert cli
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in node.cli("cluster", "info") for node in self.nodes):
                return
            time.sleep(0.2)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def busiest(self) -> int:
        """The primary holding the most keys (the one whose loss loses the most)."""
        sizes = [int(node.cli("dbsize").strip() or 0) for node in self.nodes]
        return sizes.index(max(sizes))

    def holder(self, hash_tag: str) -> int:
        """The primary serving the slot of keys tagged `{hash_tag}`."""
        slot = int(self.nodes[0].cli("cluster", "keyslot", f"{{{hash_tag}}}").strip())
        for line in self.nodes[0].cli("cluster", "nodes").splitlines():
            fields = line.split()
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return [node.port for node in self.nodes].index(port)
        raise RuntimeError(f"no primary serves slot {slot}")

    def restart_primary_empty(self, index: int) -> None:
        self.nodes[index].restart_empty()
        self.wait_ok()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database for the run (dropped after); yields its URL."""
    import psycopg

    name = f"tg_sys_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tollgate(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
    """A tollgate command run to its end, its output captured."""
    return subprocess.run([sys.executable, "-m", "service.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class Stack:
    """The processes of one set-up and how to reach them."""

    name: str
    workdir: Path
    env: dict[str, str]
    api_url: str
    database_url: str
    timing: Timing
    procs: dict[str, Proc] = field(default_factory=dict)
    state_url: str | None = None  # what `tollgate audit` reads
    secret: str = ""
    # Log byte ranges not checked for ERROR lines: (path, start, end) while a store was down.
    excused: list[tuple[Path, int, int | None]] = field(default_factory=list)
    _tokens: dict[tuple[str, str, bool], str] = field(default_factory=dict)

    @property
    def logdir(self) -> Path:
        return self.workdir / "logs"

    def add(self, name: str, *args: str, start: bool = True) -> Proc:
        proc = Proc(name, list(args), self.env, self.workdir, self.logdir)
        self.procs[name] = proc
        if start:
            proc.start()
        return proc

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return tollgate(*args, env=self.env, cwd=self.workdir, timeout=timeout)

    def token(self, user_id: str, *, admin: bool = False) -> str:
        """A token signed with the secret the stack runs on now: the first of each secret
        from `tollgate token`, as an operator makes it, the rest in this process (a
        subprocess a user costs half a second of CPU, and the dormant users are many)."""
        key = (self.secret, user_id, admin)
        if key not in self._tokens:
            if any(known[0] == self.secret for known in self._tokens):
                self._tokens[key] = issue_token(self.secret, user_id, admin=admin,
                                                ttl_s=86400)
                return self._tokens[key]
            env = {**self.env, "TOLLGATE_JWT_SECRET": self.secret}
            done = tollgate("token", user_id, "--ttl", "1d", *(["--admin"] if admin else []),
                            env=env, cwd=self.workdir)
            assert done.returncode == 0, done.stderr
            self._tokens[key] = done.stdout.strip()
        return self._tokens[key]

    def audit(self) -> subprocess.CompletedProcess[str]:
        assert self.state_url, "no state Redis URL to audit"
        env = {**self.env, "TOLLGATE_REDIS_URL": self.state_url,
               "TOLLGATE_DATABASE_URL": self.database_url}
        return tollgate("audit", env=env, cwd=self.workdir)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/ready", timeout=2).status_code == 200:
                    return
            dead = [p.name for p in self.procs.values() if p.popen and not p.alive()]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: not ready (exited: {dead})\n" +
                                   "\n".join(p.text()[-3000:] for p in self.procs.values()))
            time.sleep(0.3)

    def log_offsets(self) -> dict[Path, int]:
        return {path: path.stat().st_size for proc in self.procs.values() for path in proc.logs
                if path.exists()}

    def excuse_since(self, offsets: dict[Path, int], only: Proc | None = None) -> None:
        """Excuse every log byte written from `offsets` until now (of one process, or of
        all): a store was down, or a supervisor reported the kill the test made."""
        for path, end in self.log_offsets().items():
            if only is None or path in only.logs:
                self.excused.append((path, offsets.get(path, 0), end))

    def log_trouble(self) -> list[str]:
        """Every ERROR or traceback line of every process log, outside excused ranges."""
        found = []
        for proc in self.procs.values():
            for path in proc.logs:
                if not path.exists():
                    continue
                data = path.read_bytes()
                ranges = [(s, e) for p, s, e in self.excused if p == path]
                offset = 0
                for line in data.splitlines(keepends=True):
                    start, offset = offset, offset + len(line)
                    if any(s <= start < (e if e is not None else len(data)) for s, e in ranges):
                        continue
                    text = line.decode(errors="replace").rstrip()
                    if TROUBLE.search(text):
                        found.append(f"{path.name}: {text[:300]}")
        return found

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()
