"""Shared fixtures: real services when they are there, loud skips when they are not.

With TOLLGATE_REQUIRE_SERVICES=1 (as CI runs) a missing service fails the test instead.
Every test on the shared Redis gets a key prefix of its own and its keys are deleted after.
"""

from __future__ import annotations

import functools
import gc
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

# The shared Redis of the tests (only ever touched under a key prefix of the test's own);
# tests that FLUSHALL, SCRIPT FLUSH or kill a Redis start their own (`own_redis`).
REDIS_URL = os.environ.get("TOLLGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_DSN = os.environ.get("TOLLGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE = os.environ.get("TOLLGATE_REQUIRE_SERVICES") == "1"
# Request rate limits are on in production; tests that make many requests as one user would
# trip them, so every Settings() of the suite (and every server it starts) has them off, and
# the tests of the limits turn them on (Settings(rate_limits_enabled=True)).
os.environ.setdefault("TOLLGATE_RATE_LIMITS_ENABLED", "0")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def postgres_address(dsn: str) -> tuple[str, int]:
    """The host and port a libpq DSN (URL or key=value) connects to: its first host, with
    libpq's PGHOST/PGPORT, then localhost:5432, for what it leaves out."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or os.environ.get("PGHOST") or "localhost").split(",")[0]
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432").split(",")[0]
    return host, int(port)


def postgres_unreachable(dsn: str) -> str | None:
    """Why nothing answers where `dsn` points (a TCP port, or a Unix socket when its host
    is a folder), or None."""
    host, port = postgres_address(dsn)
    if host.startswith("/"):
        socket_file = Path(host) / f".s.PGSQL.{port}"
        return None if socket_file.exists() else f"no socket {socket_file}"
    return None if _port_open(host, port) else f"nothing listens on {host}:{port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def need(service: str, available: bool, why: str) -> None:
    if available:
        return
    if REQUIRE:
        pytest.fail(f"{service} is required (TOLLGATE_REQUIRE_SERVICES=1) but {why}")
    pytest.skip(f"SKIPPED: {service} not available: {why}")


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open("127.0.0.1", port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session", autouse=True)
def _built_once_per_process() -> Iterator[None]:
    """What every test would otherwise build again, for the same result, built once a process:
    the Lua scripts of a Core (read and expanded from lua/, ~10 ms each) and httpx's SSL
    context (the CA bundle loaded, ~30 ms a client; the tests' clients speak plain HTTP).
    Each Core still gets a dict of its own (tests replace scripts in theirs)."""
    import httpx._transports.default as httpx_transports
    from httpx import create_ssl_context

    import service.state.base as state_base
    from service.state.scripts import load_scripts

    scripts = functools.cache(load_scripts)

    def scripts_of(folder: Path | None = None) -> dict[str, Any]:
        return dict(scripts(folder))

    @functools.cache
    def shared_context(verify: bool, trust_env: bool, cafile: str | None, capath: str | None
                       ) -> Any:  # the variables httpx reads, in the key
        return create_ssl_context(verify=verify, trust_env=trust_env)

    def ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if not isinstance(verify, bool) or cert is not None:
            return create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        return shared_context(verify, trust_env, os.environ.get("SSL_CERT_FILE"),
                              os.environ.get("SSL_CERT_DIR"))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(state_base, "load_scripts", scripts_of)
        patch.setattr(httpx_transports, "create_ssl_context", ssl_context)
        yield


@pytest.fixture
def key_prefix() -> str:
    return f"tgt{uuid.uuid4().hex[:10]}"


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlsplit(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


@pytest.fixture
def redis_url() -> str:
    host, port = _host_port(REDIS_URL)
    need("Redis", _port_open(host, port), f"nothing listens on {host}:{port}")
    return REDIS_URL if urlsplit(REDIS_URL).path.strip("/") else f"{REDIS_URL.rstrip('/')}/0"


class OwnRedis:
    """A redis-server of the test's own on a free port, without persistence: one it may
    kill, restart, FLUSHALL or SCRIPT FLUSH (never the shared one)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    need("redis-server", shutil.which("redis-server") is not None, "it is not on PATH")
    server = OwnRedis(free_port())
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def real_redis(redis_url: str, key_prefix: str) -> AsyncIterator[Any]:
    """An asyncio client on the shared Redis; deletes every `<key_prefix>:*` key after."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    async for key in client.scan_iter(match=f"{key_prefix}:*", count=1000):
        await client.delete(key)
    await client.aclose()


@pytest.fixture
async def fake_redis() -> AsyncIterator[Any]:
    """A fresh FakeServer per test: a script that sets a global would poison a shared one."""
    import fakeredis

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """Starts a 3-node Redis Cluster of its own on free ports; yields `redis+cluster://...`."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    need("Redis Cluster", bool(server and cli), "redis-server/redis-cli are not on PATH")
    assert server and cli
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-cluster-"))
    # Each node's cluster bus listens on port + 10000, which must be a valid port too.
    ports = [next(p for p in iter(free_port, 0) if p + 10000 <= 65535) for _ in range(3)]
    procs = []
    try:
        for port in ports:
            node_dir = workdir / str(port)
            node_dir.mkdir()
            procs.append(subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no",
                 "--dir", str(node_dir)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        for port in ports:
            wait_for_port(port)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = subprocess.run([cli, "-p", str(ports[0]), "cluster", "info"],
                                  capture_output=True, text=True).stdout
            if "cluster_state:ok" in info:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the test Redis Cluster never reached cluster_state:ok")
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> str:
    why = postgres_unreachable(POSTGRES_DSN)
    need("PostgreSQL", why is None, f"{why} (TOLLGATE_TEST_POSTGRES={POSTGRES_DSN})")
    return POSTGRES_DSN


class DatabaseDropper:
    """Drops the tests' PostgreSQL databases in a thread of its own: a DROP DATABASE waits
    for a checkpoint (about a second on this machine), which no test needs to wait for."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.names: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, name="drop-test-databases",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psycopg

        while (name := self.names.get()) is not None:
            try:
                with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:  # reported when the session ends
                self.failures.append(f"{name}: {exc!r}")

    def drop(self, name: str) -> None:
        self.names.put(name)

    def close(self) -> None:
        self.names.put(None)
        self.thread.join(timeout=300)
        assert not self.thread.is_alive(), "the test databases were still being dropped"
        assert not self.failures, f"test databases not dropped: {self.failures}"


@pytest.fixture(scope="session")
def database_dropper(postgres_admin_dsn: str) -> Iterator[DatabaseDropper]:
    dropper = DatabaseDropper(postgres_admin_dsn)
    yield dropper
    dropper.close()


def _new_database(admin_dsn: str, template: str | None = None) -> str:
    import psycopg

    name = f"tollgate_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'
                     + (f' TEMPLATE "{template}"' if template else ""))
    return name


def _database_url(admin_dsn: str, name: str) -> str:
    return f"{admin_dsn.rsplit('/', 1)[0]}/{name}"


@pytest.fixture
def postgres_url(postgres_admin_dsn: str, database_dropper: DatabaseDropper) -> Iterator[str]:
    """A fresh, empty PostgreSQL database per test, dropped after (in the background)."""
    name = _new_database(postgres_admin_dsn)
    yield _database_url(postgres_admin_dsn, name)
    database_dropper.drop(name)


class SpareDatabases:
    """Copies of a template database, made ahead in a thread of their own (`ready` of them
    waiting): a CREATE DATABASE writes the whole template (~8 MB) to the WAL, 30-300 ms on
    this machine, which no test needs to wait for. Each copy goes to one test."""

    def __init__(self, admin_dsn: str, template: str, dropper: DatabaseDropper,
                 ready: int = 2) -> None:
        self.admin_dsn = admin_dsn
        self.template = template
        self.dropper = dropper
        self.spares: queue.Queue[str | None] = queue.Queue(maxsize=ready)
        self.stopping = threading.Event()
        self.failure: Exception | None = None
        self.thread = threading.Thread(target=self._run, name="spare-test-databases",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                name: str | None = _new_database(self.admin_dsn, template=self.template)
            except Exception as exc:  # raised by the next take()
                self.failure, name = exc, None
            while True:
                try:
                    self.spares.put(name, timeout=0.1)
                    break
                except queue.Full:
                    if self.stopping.is_set():
                        if name is not None:
                            self.dropper.drop(name)
                        return
            if name is None:
                return

    def take(self) -> str:
        name = self.spares.get(timeout=120)
        if name is None:
            raise RuntimeError(f"no copy of {self.template}: {self.failure!r}")
        return name

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)
        while not self.spares.empty():
            if (name := self.spares.get()) is not None:
                self.dropper.drop(name)


# The migrations take 0.1-0.3 s a database (alembic reads its scripts, SQLite rebuilds
# tables in batch mode); a copy of a database this process migrated once takes a few ms
# (a SQLite file) or one CREATE DATABASE ... TEMPLATE, made ahead (SpareDatabases).
# tests/persistence/test_migrations.py runs the migrations themselves on empty databases.
@pytest.fixture(scope="session")
def migrated_postgres_databases(postgres_admin_dsn: str, database_dropper: DatabaseDropper
                                ) -> Iterator[SpareDatabases]:
    """Copies of a PostgreSQL database of this process migrated to the head (nothing else
    connects to it: CREATE DATABASE ... TEMPLATE refuses a template in use)."""
    from service.history.engine import run_migrations

    template = _new_database(postgres_admin_dsn)
    run_migrations(_database_url(postgres_admin_dsn, template))
    spares = SpareDatabases(postgres_admin_dsn, template, database_dropper)
    yield spares
    spares.close()
    database_dropper.drop(template)


@pytest.fixture
def migrated_postgres_url(postgres_admin_dsn: str, database_dropper: DatabaseDropper,
                          migrated_postgres_databases: SpareDatabases) -> Iterator[str]:
    """A fresh PostgreSQL database per test at the head migration, dropped after."""
    name = migrated_postgres_databases.take()
    yield _database_url(postgres_admin_dsn, name)
    database_dropper.drop(name)


def sqlite_file(url: str) -> Path:
    from service.history.engine import is_sqlite

    assert is_sqlite(url), url
    return Path(url.split(":///", 1)[1].split("?", 1)[0])


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file of this process, migrated to the head (in the rollback-journal mode of
    the migrations: the file is the whole database)."""
    from service.history.engine import run_migrations

    path = tmp_path_factory.mktemp("sqlite-template") / "migrated.db"
    run_migrations(f"sqlite:///{path}")
    assert not path.with_name(path.name + "-wal").exists()
    return path


MigratedSqlite = Callable[[str], str]


@pytest.fixture
def migrated_sqlite(sqlite_template: Path) -> MigratedSqlite:
    """`migrated_sqlite(url)` puts a copy of the migrated file where the SQLite URL points
    (there must be no database there yet) and returns the URL."""

    def copy(url: str) -> str:
        path = sqlite_file(url)
        assert not path.exists(), f"{path} exists already"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sqlite_template, path)
        return url

    return copy


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API server (moto in server mode) in a subprocess on a free port."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        need("S3 (moto server)", False, "moto[server] is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# The fast lane (`pytest -m "not slow"`): these run servers, worker
# processes, clusters, benchmarks or fuzzers, so they are `slow` wherever they are.
SLOW_MARKERS = ("e2e", "cluster", "system")
SLOW_FOLDERS = ("e2e", "bench", "system", "docs")
# Files of long single tests (measured: each over 5 s on the 2-core machine).
SLOW_FILES = ("test_fuzz_openapi.py", "test_cli.py", "test_worker_lifecycle.py",
              "test_webhook_concurrency.py", "test_sse_multiprocess.py",
              "test_ledger_balance.py", "test_metrics_workers.py",
              "test_unvouched_bodies_http.py")
SERVER_FIXTURES = ("api", "embedded_api", "real_settings")
# pytest-xdist (`-n 2`, with `--dist loadgroup` from pyproject's addopts) sends each group
# to one worker: a test file is a group, so its module fixtures start once; the system
# set-ups are one group, so no two of them share the cores, and they go first, being the
# longest (a group that started last would finish last).
SYSTEM_GROUP = "system"


def _xdist_group(item: pytest.Item, tests: Path, folder: str) -> str:
    marker = item.get_closest_marker("xdist_group")
    if marker is not None:
        return str(marker.args[0] if marker.args else marker.kwargs["name"])
    if folder == "system":
        return SYSTEM_GROUP
    path = Path(str(item.path))
    return str(path.relative_to(tests)) if path.is_relative_to(tests) else str(path)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The garbage collector, set for a test process: what the collection built (modules,
    test items) frozen out of its full passes, and its young generation 10,000 objects, not
    700. A served app is ~100k objects: by default the collector took a third of the time
    of 60 served tests (gc.callbacks: 3.6 s of 9.7 s; 1.4 s so)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


# tryfirst: xdist's own hook (on each worker) reads the xdist_group marks this adds.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).resolve().parent
    groups: dict[str, str] = {}
    for item in items:
        path = Path(str(item.path))
        folder = path.relative_to(tests).parts[0] if path.is_relative_to(tests) else ""
        callspec = getattr(item, "callspec", None)
        fixtures = getattr(item, "fixturenames", ())
        on_cluster = "cluster_url" in fixtures or (
            callspec is not None and "cluster" in callspec.params.values())
        # An API server started for the test (a uvicorn thread): the ~250 tests that ask
        # for one by name stay out of the fast lane (any_api's asks by getfixturevalue).
        on_server = any(name in fixtures for name in SERVER_FIXTURES)
        if (folder in SLOW_FOLDERS or path.name in SLOW_FILES or on_cluster or on_server
                or any(item.get_closest_marker(name) for name in SLOW_MARKERS)):
            item.add_marker(pytest.mark.slow)
        groups[item.nodeid] = _xdist_group(item, tests, folder)
        item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    # A stable sort: every worker must collect the same order (xdist checks it).
    items.sort(key=lambda item: groups[item.nodeid] != SYSTEM_GROUP)
