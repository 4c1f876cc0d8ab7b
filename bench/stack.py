"""The real system a benchmark runs against: a fresh PostgreSQL database, tollgate's own
settings for one run, server subprocesses started as a user starts them, and the CPU time
those processes spent.

Everything here is created per run and removed after: the database is dropped, the key
prefix and the RQ queue named after it are deleted, every subprocess (and its children:
granian and uvicorn fork worker processes) is killed through its process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[Any], what: str, *, timeout: float = 10.0,
                  pause: float = 0.05) -> None:
    """Until something accepts on 127.0.0.1:`port`; raises if `proc` exits or time runs out."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(pause)


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of the benchmark's own on a free port (no persistence, like the shared
    one here): its CPU, memory and script counters then hold nothing but the benchmark's."""
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("a private Redis needs redis-server on PATH")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tgbench-redis-") as folder:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port, proc, "the private redis-server")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


# --- PostgreSQL ----------------------------------------------------------------------------

class Database:
    """A fresh database on the server of `admin_dsn`, named tgbench_<hex>, dropped after."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.name = f"tgbench_{uuid.uuid4().hex[:12]}"
        self.url = f"{admin_dsn.rsplit('/', 1)[0]}/{self.name}"

    def create(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))

    def drop(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(self.name)))

    def server_version(self) -> str:
        import psycopg

        with psycopg.connect(self.admin_dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]).split()[0] if row else "?"


# --- one run's tollgate settings --------------------------------------------------------------

@dataclass
class Stack:
    """The TOLLGATE_* environment of one run: real Redis, a fresh database, local storage."""

    redis_url: str
    database: Database
    prefix: str
    secret: str = field(default_factory=lambda: "bench-" + uuid.uuid4().hex * 2)
    storage: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tgbench-")))
    extra: dict[str, str] = field(default_factory=dict)

    def env(self, public_url: str = "http://127.0.0.1:8000", **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
        env.update({
            "TOLLGATE_REDIS_URL": self.redis_url,
            "TOLLGATE_QUEUE_REDIS_URL": self.redis_url,
            "TOLLGATE_DATABASE_URL": self.database.url,
            "TOLLGATE_STORAGE_DIR": str(self.storage),
            "TOLLGATE_KEY_PREFIX": self.prefix,
            "TOLLGATE_QUEUE_NAME": self.prefix,
            "TOLLGATE_JWT_SECRET": self.secret,
            "TOLLGATE_PUBLIC_URL": public_url,
            "PYTHONPATH": str(ROOT),
            **self.extra,
            **more,
        })
        return env

    def settings(self, **overrides: Any) -> Any:
        from service.settings import Settings

        values: dict[str, Any] = dict(
            redis_url=self.redis_url, queue_redis_url=self.redis_url,
            database_url=self.database.url, storage_dir=str(self.storage),
            key_prefix=self.prefix, queue_name=self.prefix, jwt_secret=self.secret)
        return Settings(**{**values, **overrides})

    def migrate(self, tree: Path = ROOT) -> None:
        env = self.env()
        if tree != ROOT:
            env["PYTHONPATH"] = str(tree)
        subprocess.run([sys.executable, "-m", cli_module(tree), "migrate"], env=env,
                       cwd=tree, check=True, capture_output=True, timeout=120)

    def remove_storage(self) -> None:
        import shutil

        shutil.rmtree(self.storage, ignore_errors=True)


async def delete_run_keys(redis_url: str, prefix: str) -> int:
    """The prefix's keys and RQ's keys for the queue named after the prefix."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url, decode_responses=True)
    deleted = 0
    try:
        for pattern in (f"{prefix}:*", f"rq:*{prefix}*"):
            batch: list[str] = []
            async for key in client.scan_iter(match=pattern, count=5000):
                batch.append(key)
                if len(batch) >= 5000:
                    deleted += await client.unlink(*batch)
                    batch = []
            if batch:
                deleted += await client.unlink(*batch)
    finally:
        await client.aclose()
    return deleted


def cli_module(tree: Path = ROOT) -> str:
    """The module behind `tollgate` in a checkout: service.cli.main, or service.cli in the
    commits before the layout change (e.g. 0cd71d2, the "before" of bench/job_cost.py)."""
    return "service.cli.main" if (tree / "service" / "cli" / "main.py").exists() else "service.cli"


# --- processes -----------------------------------------------------------------------------

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


def process_cpu(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of one process, in seconds (0 when it is gone); with
    `reaped_children`, plus the CPU of the children it has waited for (an RQ worker's
    finished work-horses)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


class Service:
    """A subprocess in a session of its own (so its forked workers die with it), its output
    in a file (nobody reads a long-running server's pipe)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str],
                 cwd: Path = ROOT) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    def start(self) -> Service:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (closed by stop)
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def pids(self) -> list[int]:
        return [self.pid, *descendants(self.pid)] if self.alive() else []

    def cpu_by_process(self) -> dict[int, float]:
        return {pid: process_cpu(pid) for pid in self.pids()}

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        # Whatever is left of the group (a worker's work-horse, a server's children).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        if self.log is not None:
            self.log.close()
            self.log = None


class HttpServer(Service):
    """`python -m service.cli.main api ...` or `python bench/bare_app.py ...` on a free port."""

    def __init__(self, name: str, app: str, server: str, workers: int, stack: Stack,
                 tree: Path = ROOT) -> None:
        """`tree`: the checkout whose `tollgate api` runs (another commit's worktree too)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = server
        self.workers = workers
        command = ([sys.executable, "-m", cli_module(tree), "api"] if app == "tollgate"
                   else [sys.executable, str(ROOT / "bench" / "bare_app.py")])
        env = stack.env(public_url=self.url)
        if tree != ROOT:
            env["PYTHONPATH"] = str(tree)
        super().__init__(name, [*command, "--server", server, "--workers", str(workers),
                                "--port", str(self.port)], env, cwd=tree)
        self.health_path = "/health" if app == "tollgate" else "/bare"

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every worker process answers: a few dozen fresh connections must all get
        a 200 (a freshly spawned worker may not accept yet while its sibling does)."""
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.output()[-3000:]}")
            try:
                statuses = [httpx.get(self.url + self.health_path, timeout=2).status_code
                            for _ in range(8 * self.workers)]
                if all(status == 200 for status in statuses):
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready:\n{self.output()[-3000:]}")
            time.sleep(0.2)


def start_all(servers: list[HttpServer]) -> None:
    for server in servers:
        server.start()
    for server in servers:
        server.wait_ready()


# --- the API as a client uses it ---------------------------------------------------------------

class ApiClient:
    """The API over HTTP: users through /admin/users; jobs created, their inputs uploaded to
    the presigned URLs (`uploads_at_once` side by side), confirmed and executed.
    `token_of(user)`: the user's bearer token."""

    def __init__(self, url: str, admin_token: str, token_of: Callable[[str], str], *,
                 timeout: float = 60, uploads_at_once: int = 1) -> None:
        import httpx

        self.http = httpx.AsyncClient(base_url=url, timeout=timeout,
                                      limits=httpx.Limits(max_connections=32))
        self.admin = {"Authorization": f"Bearer {admin_token}"}
        self.token_of = token_of
        self.uploads_at_once = uploads_at_once

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token_of(user)}"}

    async def create_user(self, user: str, credits: int, plan: str = "pro") -> None:
        response = await self.http.post("/admin/users", headers=self.admin,
                                        json={"id": user, "plan": plan, "credits": credits})
        if response.status_code != 201:
            raise RuntimeError(f"POST /admin/users: {response.status_code} {response.text}")

    async def uploaded_job(self, user: str, inputs: list[bytes]) -> str:
        """A job of one image item per input, every input uploaded, the upload confirmed."""
        import asyncio

        body = {"items": [{"name": f"img-{i}.png", "content_type": "image/png",
                           "size": len(data)} for i, data in enumerate(inputs)]}
        created = await self.http.post("/jobs", json=body, headers=self.auth(user))
        if created.status_code != 201:
            raise RuntimeError(f"POST /jobs: {created.status_code} {created.text}")
        job = created.json()
        gate = asyncio.Semaphore(self.uploads_at_once)

        async def put(upload: dict[str, Any], data: bytes) -> None:
            async with gate:
                answer = await self.http.request(upload["method"], upload["url"],
                                                 headers=upload["headers"], content=data)
            if answer.status_code not in (200, 201, 204):
                raise RuntimeError(f"upload: {answer.status_code} {answer.text}")

        await asyncio.gather(*(put(upload, data)
                               for upload, data in zip(job["uploads"], inputs, strict=True)))
        confirmed = await self.http.post(f"/jobs/{job['id']}/confirm-upload",
                                         headers=self.auth(user))
        if confirmed.status_code != 200:
            raise RuntimeError(f"confirm-upload: {confirmed.status_code} {confirmed.text}")
        return str(job["id"])

    async def execute(self, user: str, job_id: str) -> None:
        response = await self.http.post(f"/jobs/{job_id}/execute", headers=self.auth(user))
        if response.status_code != 202:
            raise RuntimeError(f"execute: {response.status_code} {response.text}")

    async def close(self) -> None:
        await self.http.aclose()
