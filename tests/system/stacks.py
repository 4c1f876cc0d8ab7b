"""The three set-ups of the system suite, each with its faults.

(a) `tollgate dev` as the README starts it: embedded fakeredis, SQLite, a local folder, in a
    folder of its own; its fault is a kill -9 of the one process and a start again in the
    same folder (the embedded state is lost, SQL and files stay).
(b) standalone Redis (state) + another for the RQ queue, PostgreSQL, `tollgate api
    --workers 2`, a worker per model, two flushers.
(c) the same on a 3-primary Redis Cluster for the state.
Faults of (b) and (c): kill -9 a worker mid-batch, an API process (granian starts it
again) and a flusher (started again), then the state Redis (or one primary) restarted
empty on its port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.system.harness import (
    MODELS_TOML,
    RedisCluster,
    RedisNode,
    Stack,
    Timing,
    base_env,
    children,
    free_port,
    postgres_database,
)
from tests.system.workload import JobRecord, Workload

FaultAction = Callable[[Workload], Awaitable[None]]
STORE_GRACE_S = 5.0  # log lines this long after a store came back are excused too


@dataclass
class System:
    stack: Stack
    faults: list[tuple[str, FaultAction]] = field(default_factory=list)
    # Jobs that were live when the state was lost: their pending webhooks and their holds
    # are lost with it (README, "When Redis loses users"); set by the store fault.
    wiped_at: float | None = None
    # Unix time the last fault's store was back (plus a grace): the webhook delay target
    # holds for jobs of the fault phase that finished after it.
    settled_wall: float | None = None


def _write_models(folder: Path) -> Path:
    path = folder / "models.toml"
    path.write_text(MODELS_TOML)
    return path


def _banner(stack: Stack, proc_name: str, timeout: float = 90) -> None:
    """Reads the secret and the embedded Redis URL from `tollgate dev`'s banner."""
    proc = stack.procs[proc_name]
    deadline = time.monotonic() + timeout
    while True:
        text = proc.logs[-1].read_text(errors="replace") if proc.logs[-1].exists() else ""
        secret = re.search(r"TOLLGATE_JWT_SECRET=(\S+)", text)
        redis = re.search(r"TOLLGATE_REDIS_URL=(\S+) tollgate inspect", text)
        if secret and redis:
            stack.secret, stack.state_url = secret[1], redis[1]
            return
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"tollgate dev printed no banner:\n{text[-3000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def dev_system(folder: Path, timing: Timing) -> Iterator[System]:
    port = free_port()
    env = {**base_env(), **timing.env(), "TOLLGATE_MODELS": str(_write_models(folder))}
    stack = Stack("dev", folder, env, f"http://127.0.0.1:{port}",
                  f"sqlite:///{folder / 'tollgate.db'}", timing)
    stack.logdir.mkdir()
    stack.add("dev", "dev", "--port", str(port))
    system = System(stack)

    async def kill_dev(work: Workload) -> None:
        await work.wait_running("slow")
        stack.procs["dev"].kill()
        system.wiped_at = time.monotonic()
        work.state_lost()
        stack.procs["dev"].start()
        await asyncio.to_thread(_banner, stack, "dev")
        await asyncio.to_thread(stack.wait_ready)
        await asyncio.sleep(STORE_GRACE_S)
        system.settled_wall = time.time()

    system.faults = [("kill -9 tollgate dev mid-batch, start it again", kill_dev)]
    try:
        _banner(stack, "dev")
        stack.wait_ready()
        yield system
    finally:
        stack.stop()


def _services_env(folder: Path, timing: Timing, state_url: str, queue_url: str,
                  database_url: str, api_url: str) -> dict[str, str]:
    return {**base_env(), **timing.env(),
            "TOLLGATE_MODELS": str(_write_models(folder)),
            "TOLLGATE_REDIS_URL": state_url, "TOLLGATE_QUEUE_REDIS_URL": queue_url,
            "TOLLGATE_DATABASE_URL": database_url, "TOLLGATE_PUBLIC_URL": api_url,
            "TOLLGATE_STORAGE_DIR": str(folder / "data"),
            "TOLLGATE_JWT_SECRET": secrets.token_urlsafe(32)}


def _start_services(stack: Stack, port: int) -> None:
    migrated = stack.run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    stack.add("api", "api", "--port", str(port), "--workers", "2")
    for model in ("thumbnail", "slow"):
        stack.add(f"worker-{model}", "worker", "--model", model)
    for index in (1, 2):
        stack.add(f"flusher-{index}", "flusher")
    stack.wait_ready()


# Restarts the state store (or part of it) empty; answers what it lost and which jobs' state
# it held.
StoreLoss = Callable[[Workload], tuple[str, Callable[[JobRecord], bool]]]


def _process_faults(system: System, restart_store: StoreLoss) -> None:
    stack = system.stack

    async def kill_worker(work: Workload) -> None:
        await work.wait_running("slow")
        stack.procs["worker-slow"].kill()
        await asyncio.sleep(0.5)
        stack.procs["worker-slow"].start()

    async def kill_api_process(work: Workload) -> None:
        api = stack.procs["api"]
        assert api.popen is not None
        before, offsets = children(api.popen.pid), stack.log_offsets()
        assert before, "the API server has no worker processes"
        work.disruptions.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len([p for p in children(api.popen.pid) if p not in before]) < 1:
            assert time.monotonic() < deadline, "granian did not start the API process again"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        stack.excuse_since(offsets, only=api)  # granian's "Unexpected exit from worker-1"

    async def kill_flusher(work: Workload) -> None:
        work.flusher_kills.append(time.monotonic())
        stack.procs["flusher-1"].kill()
        await asyncio.sleep(0.5)
        stack.procs["flusher-1"].start()

    async def store_lost(work: Workload) -> None:
        offsets = stack.log_offsets()
        system.wiped_at = began = time.monotonic()
        where, held = await asyncio.to_thread(restart_store, work)
        work.state_lost(where, held, began)
        await asyncio.to_thread(stack.wait_ready)
        await asyncio.sleep(STORE_GRACE_S)
        stack.excuse_since(offsets)
        system.settled_wall = time.time()

    system.faults = [("kill -9 the slow model's worker mid-batch, start it again", kill_worker),
                     ("kill -9 one API process (granian starts another)", kill_api_process),
                     ("kill -9 a flusher, start it again", kill_flusher),
                     ("restart the state Redis empty", store_lost)]


@contextlib.contextmanager
def standalone_system(folder: Path, timing: Timing) -> Iterator[System]:
    state, queue = RedisNode(folder), RedisNode(folder)
    state.start()
    queue.start()
    port = free_port()
    try:
        with postgres_database() as database_url:
            api_url = f"http://127.0.0.1:{port}"
            env = _services_env(folder, timing, state.url, queue.url, database_url, api_url)
            stack = Stack("standalone", folder, env, api_url, database_url, timing,
                          state_url=state.url, secret=env["TOLLGATE_JWT_SECRET"])
            stack.logdir.mkdir()
            system = System(stack)
            def lose_state(_: Workload) -> tuple[str, Callable[[JobRecord], bool]]:
                state.restart_empty()
                return f"redis-server :{state.port}", lambda _: True

            _process_faults(system, lose_state)
            try:
                _start_services(stack, port)
                yield system
            finally:
                stack.stop()
    finally:
        state.kill()
        queue.kill()


def _lose_primary(cluster: RedisCluster, work: Workload
                  ) -> tuple[str, Callable[[JobRecord], bool]]:
    """Restarts empty the primary holding a live job's bucket (a job id ends in its bucket),
    so the loss takes live work with it (else the one with the most keys)."""
    live = [record for record in work.jobs.values() if record.final is None]
    index = cluster.holder(live[-1].id.rsplit("-", 1)[1]) if live else cluster.busiest()
    buckets = {record.id.rsplit("-", 1)[1] for record in work.jobs.values()}  # users'"'"' buckets
    lost = {bucket for bucket in buckets if cluster.holder(bucket) == index}
    cluster.restart_primary_empty(index)
    return (f"primary :{cluster.nodes[index].port}",
            lambda record: record.id.rsplit("-", 1)[1] in lost)


@contextlib.contextmanager
def cluster_system(folder: Path, timing: Timing) -> Iterator[System]:
    cluster, queue = RedisCluster(folder), RedisNode(folder)
    queue.start()
    port = free_port()
    try:
        cluster.start()
        with postgres_database() as database_url:
            api_url = f"http://127.0.0.1:{port}"
            env = _services_env(folder, timing, cluster.url, queue.url, database_url, api_url)
            stack = Stack("cluster", folder, env, api_url, database_url, timing,
                          state_url=cluster.url, secret=env["TOLLGATE_JWT_SECRET"])
            stack.logdir.mkdir()
            system = System(stack)
            _process_faults(system, lambda work: _lose_primary(cluster, work))
            try:
                _start_services(stack, port)
                yield system
            finally:
                stack.stop()
    finally:
        cluster.kill()
        queue.kill()


SETUPS: dict[str, Callable[[Path, Timing], contextlib.AbstractContextManager[System]]] = {
    "dev": dev_system, "standalone": standalone_system, "cluster": cluster_system}
