"""What every scenario shares: a stack of real `tollgate` processes started as a user starts
them, a closed-loop load, a worker played over the wire contract, and one result format.

A scenario touches tollgate only through its public entry points: the `tollgate` command
(api, worker, flusher, migrate, token), HTTP (the Python client or httpx), and the RQ queue a
worker reads. Each run gets a redis-server of its own (its counters then hold only the run's
calls), a fresh database (a SQLite file, or a PostgreSQL database dropped after) and a temp
folder for storage; everything is removed when the run ends.

Result: {"name", "title", "created_at", "quick", "machine", "params",
         "baseline": {"label", "value", "unit", "extra"},
         "rows": [{"label", "value", "ratio", "target", "extra"}]}
`ratio` is against the baseline measured in the same run, oriented so that higher is better
for tollgate; `target` is the ratio the row should reach, or null. Results are merged by name
into bench/results/latest.json (a --quick run into bench/results/quick.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# `--cluster`: the state Redis of every stack is a 3-node Redis Cluster of its own (RQ stays
# on the standalone redis-server, as RQ needs).
CLUSTER = {"on": False}


# --- command line and results -------------------------------------------------------------------

def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options of every scenario; SIGTERM unwinds like Ctrl-C so the stack is removed."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    cli = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    cli.add_argument("--quick", action="store_true", help="a few seconds: proves it works")
    cli.add_argument("--out", type=Path, default=None,
                     help="result file to merge into (default bench/results/latest.json, "
                          "quick.json with --quick)")
    cli.add_argument("--postgres-dsn", default=DEFAULT_POSTGRES_DSN,
                     help="server for the scenarios that use PostgreSQL")
    cli.add_argument("--cluster", action="store_true",
                     help="tollgate's state on a 3-node Redis Cluster (RQ on a standalone "
                          "redis-server, as always)")
    return cli


@dataclass(slots=True)
class Row:
    label: str
    value: float
    ratio: float | None
    target: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Result:
    name: str
    title: str
    unit: str
    baseline: Row
    rows: list[Row]
    params: dict[str, Any] = field(default_factory=dict)
    quick: bool = False

    def to_json(self) -> dict[str, Any]:
        base = asdict(self.baseline)
        return {"name": self.name, "title": self.title, "quick": self.quick,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine_info(), "params": self.params,
                "baseline": {"label": base["label"], "value": base["value"], "unit": self.unit,
                             "extra": base["extra"]},
                "rows": [asdict(row) for row in self.rows]}


def save(results: Sequence[Result], out: Path | None, quick: bool) -> Path:
    """Prints each result's table and merges the results into the result file by name."""
    path = out or RESULTS / ("quick.json" if quick else "latest.json")
    stored: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for result in results:
        document = result.to_json()
        stored[result.name] = document
        print(markdown(document), flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(stored.items())), indent=2) + "\n")
    print(f"wrote {path}")
    return path


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(document: dict[str, Any]) -> str:
    """One result as a Markdown table: the baseline first (ratio 1), then each row."""
    base = document["baseline"]
    keys = sorted({key for row in document["rows"] for key, value in row["extra"].items()
                   if isinstance(value, int | float | str)})
    lines = [f"### {document['title']}" + (" (quick run)" if document.get("quick") else ""),
             "", "| | " + base["unit"] + " | ratio | target | " + " | ".join(keys) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(keys)]
    entries = [(f"{base['label']} (baseline)", base["value"], 1.0, None, base["extra"]),
               *((r["label"], r["value"], r["ratio"], r["target"], r["extra"])
                 for r in document["rows"])]
    for label, value, ratio, target, extra in entries:
        mark = "" if target is None or ratio is None else (" ✓" if ratio >= target else " ✗")
        lines.append(f"| {label} | {cell(value)} | {cell(ratio)}{mark} | "
                     f"{'-' if target is None else f'≥ {target:g}'} | "
                     + " | ".join(cell(extra.get(key)) for key in keys) + " |")
    machine = document.get("machine", {})
    lines += ["", f"{machine.get('nproc')} CPUs ({machine.get('cpu_model')}), "
                  f"{machine.get('python')}, load {machine.get('loadavg_at_start')}", ""]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model,
            "python": platform.python_version(), "os": platform.platform(),
            "loadavg_at_start": [round(v, 2) for v in os.getloadavg()]}


# --- measuring ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Timing:
    calls: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


async def closed_loop(call: Callable[[int], Awaitable[object]], *, tasks: int,
                      seconds: float | None = None, limit: int | None = None) -> Timing:
    """`tasks` coroutines take the next index from one counter and await `call(index)` until
    `seconds` passed or `limit` indexes were handed out (a fixed concurrency, as N
    connections make); the clock stops at the last answer."""
    next_index = 0
    latencies: list[float] = []
    start = time.perf_counter()
    stop_at = start + seconds if seconds is not None else float("inf")

    async def one_task() -> None:
        nonlocal next_index
        while True:
            began = time.perf_counter()
            if began >= stop_at or (limit is not None and next_index >= limit):
                return
            index = next_index
            next_index += 1
            await call(index)
            latencies.append((time.perf_counter() - began) * 1000)

    async with asyncio.TaskGroup() as group:
        for _ in range(tasks):
            group.create_task(one_task())
    return Timing(len(latencies), time.perf_counter() - start, latencies)


def process_cpu(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of one process in seconds (0 once gone); with `reaped_children`, plus
    the children it waited for (an RQ worker's finished work-horses)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# --- processes ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    """A subprocess in a session of its own (its forked children die with it), its output in
    a file (nobody reads a long-running server's pipe)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], port: int = 0) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115  (closed by stop)
        self.proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def cpu(self, *, reaped_children: bool = False) -> float:
        """CPU seconds of the process and its live children."""
        if not self.alive():
            return 0.0
        return (process_cpu(self.proc.pid, reaped_children=reaped_children)
                + sum(process_cpu(pid) for pid in descendants(self.proc.pid)))

    def wait_http(self, path: str, timeout: float = 60.0, processes: int = 1) -> Proc:
        """Until a few fresh connections per server process all get a 200."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.output()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if all(httpx.get(self.url + path, timeout=2).status_code == 200
                       for _ in range(4 * processes)):
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready:\n{self.output()[-3000:]}")
            time.sleep(0.2)

    def stop(self, grace: float = 10.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        self.log.close()


def tollgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli.main", *args]


class Stack:
    """One run's private redis-server, database and storage, and the `tollgate` processes
    started on them. `postgres`: a PostgreSQL server DSN (a fresh database on it), else a
    SQLite file."""

    def __init__(self, postgres: str | None = None, **env: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="tgbench-"))
        self.secret = "bench-" + uuid.uuid4().hex * 2
        self.queue = "bench"
        self.procs: list[Proc] = []
        self.dispatching = False  # a `tollgate dispatcher` runs (started by take_batches)
        self.postgres, self.database = postgres, f"tgbench_{uuid.uuid4().hex[:12]}"
        port = free_port()
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.redis_proc = Proc("redis-server", [
            shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
            "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.folder)], {})
        self.extra = env
        self.cluster_url: str | None = None
        self.cluster_procs: list[Proc] = []
        self.cluster_ports: list[int] = []
        if CLUSTER["on"]:
            try:
                self.start_cluster()
            except BaseException:
                for proc in [self.redis_proc, *self.cluster_procs]:
                    proc.stop()
                shutil.rmtree(self.folder, ignore_errors=True)
                raise
        if postgres:
            import psycopg

            with psycopg.connect(postgres, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.database}"')
            self.database_url = f"{postgres.rsplit('/', 1)[0]}/{self.database}"
        else:
            self.database_url = f"sqlite:///{self.folder}/tollgate.db"
        subprocess.run(tollgate("migrate"), env=self.env(), cwd=ROOT, check=True,
                       capture_output=True, timeout=120)

    def start_cluster(self) -> None:
        """A 3-node Redis Cluster (no replicas) on free ports, as tests/conftest.py starts
        one; the stack's state goes there."""
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if not server or not cli:
            raise RuntimeError("--cluster needs redis-server and redis-cli on PATH")
        self.cluster_ports = [next(p for p in iter(free_port, 0) if p + 10000 <= 65535)
                              for _ in range(3)]
        for port in self.cluster_ports:
            node = self.folder / f"node-{port}"
            node.mkdir()
            self.cluster_procs.append(Proc("redis-server", [
                server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no",
                "--dir", str(node)], {}))
        for port in self.cluster_ports:
            deadline = time.monotonic() + 20
            while subprocess.run([cli, "-p", str(port), "ping"], capture_output=True,
                                 text=True).stdout.strip() != "PONG":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node {port} never answered")
                time.sleep(0.05)
        subprocess.run([cli, "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in self.cluster_ports),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 20
        while "cluster_state:ok" not in subprocess.run(
                [cli, "-p", str(self.cluster_ports[0]), "cluster", "info"],
                capture_output=True, text=True).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("the bench Redis Cluster never reached cluster_state:ok")
            time.sleep(0.1)
        self.cluster_url = f"redis+cluster://127.0.0.1:{self.cluster_ports[0]}"

    def env(self, **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
        env.update({
            "TOLLGATE_REDIS_URL": self.cluster_url or self.redis_url,
            "TOLLGATE_QUEUE_REDIS_URL": self.redis_url,
            "TOLLGATE_DATABASE_URL": self.database_url,
            "TOLLGATE_STORAGE_DIR": str(self.folder / "files"),
            "TOLLGATE_QUEUE_NAME": self.queue, "TOLLGATE_JWT_SECRET": self.secret,
            "TOLLGATE_RATE_LIMITS_ENABLED": "0", "PYTHONPATH": str(ROOT), **self.extra, **more})
        return env

    def start(self, name: str, args: list[str], port: int = 0, **env: str) -> Proc:
        proc = Proc(name, args, self.env(**env), port)
        self.procs.append(proc)
        return proc

    def api(self, processes: int = 1, server: str = "granian", **env: str) -> Proc:
        port = free_port()
        proc = self.start("tollgate api", tollgate(
            "api", "--port", str(port), "--server", server, "--workers", str(processes)),
            port, TOLLGATE_PUBLIC_URL=f"http://127.0.0.1:{port}", **env)
        # The processes started after it (the flusher's dispatcher signs the batches' URLs
        # and callback URLs) hand out this API's address, as compose.yaml's shared env does.
        self.extra.setdefault("TOLLGATE_PUBLIC_URL", proc.url)
        return proc.wait_http("/health", processes=processes)

    def bare(self, processes: int = 1, server: str = "granian") -> Proc:
        """bench/bare_app.py under the same server and process count (`tollgate api`'s)."""
        port = free_port()
        args = ([sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
                 "--workers", str(processes), "--port", str(port),
                 "bench.bare_app:create_app"] if server == "granian" else
                [sys.executable, "-m", "uvicorn", "--factory", "--workers", str(processes),
                 "--port", str(port), "--no-access-log", "bench.bare_app:create_app"])
        return self.start("bare app", args, port).wait_http("/bare", processes=processes)

    def worker(self, api: Proc, processor: str, *flags: str, **env: str) -> Proc:
        return self.start("tollgate worker", tollgate("worker", "--queue", self.queue, *flags),
                          TOLLGATE_PROCESSOR=processor, TOLLGATE_PUBLIC_URL=api.url, **env)

    def flusher(self, **env: str) -> Proc:
        return self.start("tollgate flusher", tollgate("flusher"), **env)

    async def tokens(self, users: Sequence[str], admin: bool = False) -> list[str]:
        """`tollgate token USER` for each user, a few at a time."""
        gate = asyncio.Semaphore(4)

        async def one(user: str) -> str:
            async with gate:
                proc = await asyncio.create_subprocess_exec(
                    *tollgate("token", user, "--ttl", "6h", *(["--admin"] if admin else [])),
                    env=self.env(), stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL)
                out, _ = await proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"tollgate token {user} failed")
            return out.decode().strip()

        return list(await asyncio.gather(*(one(user) for user in users)))

    def redis_stats(self) -> tuple[int, float]:
        """(commands the private redis-server ran, its CPU seconds) so far."""
        import redis

        with redis.Redis.from_url(self.redis_url) as client:
            stats = client.info("commandstats")
            cpu = client.info("cpu")
        return (sum(int(v["calls"]) for v in stats.values()),
                float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))

    def close(self) -> None:
        for proc in [*self.procs, self.redis_proc, *self.cluster_procs]:
            proc.stop()
        if self.postgres:
            import psycopg

            with psycopg.connect(self.postgres, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def stack(postgres: str | None = None, **env: str) -> Iterator[Stack]:
    made = Stack(postgres, **env)
    try:
        yield made
    finally:
        made.close()


# --- users, jobs and a worker played over the wire ---------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 1016  # 1 KiB per input
CREDITS = 10**9  # fits credit_ledger.amount (a 32-bit INTEGER column)
JOBS_PER_USER = 10  # the pro plan's concurrency


async def users(stack: Stack, api: Proc, names: Sequence[str], plans: Sequence[str] = ()
                ) -> list[str]:
    """Users with plenty of credits (pro, unless `plans` names each one's), made through
    POST /admin/users; their tokens."""
    admin, *tokens = await stack.tokens(["bench-admin"], admin=True) + await stack.tokens(names)
    async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
        for name, plan in zip(names, plans or ["pro"] * len(names), strict=True):
            made = await http.post("/admin/users", headers={"Authorization": f"Bearer {admin}"},
                                   json={"id": name, "plan": plan, "credits": CREDITS})
            assert made.status_code == 201, made.text
    return tokens


def job_body(items: int, prefix: str = "img", **more: Any) -> dict[str, Any]:
    return {"items": [{"name": f"{prefix}-{i}.png", "content_type": "image/png",
                       "size": len(PNG)} for i in range(items)], **more}


async def ready_job(http: httpx.AsyncClient, token: str, items: int, execute: bool = True,
                    prefix: str = "img", **more: Any) -> str:
    """A job created, its inputs uploaded, confirmed and (by default) executed, over HTTP;
    its items are named `<prefix>-<index>.png`."""
    auth = {"Authorization": f"Bearer {token}"}
    created = await http.post("/jobs", json=job_body(items, prefix, **more), headers=auth)
    assert created.status_code == 201, created.text
    job = created.json()
    for upload in job["uploads"]:
        put = await http.request(upload["method"], upload["url"], headers=upload["headers"],
                                 content=PNG)
        assert put.status_code in (200, 201, 204), put.text
    confirmed = await http.post(f"/jobs/{job['id']}/confirm-upload", headers=auth)
    assert confirmed.status_code == 200, confirmed.text
    if execute:
        executed = await http.post(f"/jobs/{job['id']}/execute", headers=auth)
        assert executed.status_code == 202, executed.text
    return str(job["id"])


def take_batches(stack: Stack, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The next `count` batch payloads from the RQ queue, taken off it as a worker takes
    them (RQ's JSON serializer; the payload is the batch job's one argument)."""
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    payloads: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    if not stack.dispatching:  # executed jobs wait in tollgate's order until it feeds RQ
        stack.start("tollgate dispatcher", tollgate("dispatcher"))
        stack.dispatching = True
    with redis.Redis.from_url(stack.redis_url) as connection:
        queue = Queue(stack.queue, connection=connection, serializer=JSONSerializer)
        # The flusher's dispatcher hands batches to RQ only for live workers: this reader
        # registers as one (RQ's heartbeat key and its queue's set), as a worker does.
        worker_key = f"rq:worker:bench-reader-{os.getpid()}"
        connection.hset(worker_key, "queues", stack.queue)
        connection.sadd(f"rq:workers:{stack.queue}", worker_key)
        while len(payloads) < count:
            connection.expire(worker_key, 30)
            raw = connection.lpop(queue.key)
            job_id = raw.decode() if isinstance(raw, bytes) else raw
            if job_id is None:
                if time.monotonic() > deadline:
                    logs = "".join(f"\n--- {proc.name}:\n{proc.output()[-2000:]}"
                                   for proc in stack.procs
                                   if "dispatcher" in proc.name and proc.alive())
                    raise RuntimeError(f"{len(payloads)} of {count} batches reached the "
                                       f"queue{logs}")
                time.sleep(0.05)
                continue
            job = queue.fetch_job(job_id)
            assert job is not None, job_id
            payloads.append(job.args[0])
            job.delete()
        connection.srem(f"rq:workers:{stack.queue}", worker_key)
        connection.delete(worker_key)
    return payloads


def report_body(payload: dict[str, Any]) -> dict[str, Any]:
    """A batched report (`event: "items"`) of every item of a batch, each done."""
    return {"event": "items", "items": [
        {"index": item["index"], "ok": True, "output_key": item["output_key"],
         "idempotency_key": f"{payload['job_id']}:item:{item['index']}"}
        for item in payload["items"]]}


async def report(http: httpx.AsyncClient, payload: dict[str, Any], body: dict[str, Any]) -> None:
    answer = await http.post(payload["callback_url"], json=body,
                             headers={"Authorization": f"Bearer {payload['callback_token']}"})
    assert answer.status_code == 200, answer.text


def run(main: Coroutine[Any, Any, list[Result]], args: argparse.Namespace) -> None:
    CLUSTER["on"] = bool(getattr(args, "cluster", False))
    started = time.monotonic()
    results = asyncio.run(main)
    save(results, args.out, args.quick)
    print(f"{time.monotonic() - started:.0f} s in all")
