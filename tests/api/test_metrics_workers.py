"""Request metrics of `tollgate api --workers N`: every scrape, whichever process answers it,
reports the requests of all the server's processes (prometheus_client's multiprocess mode,
set up by `tollgate api`: service.cli.serve)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.history.engine import run_migrations
from tests.api.conftest import SECRET
from tests.conftest import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


STARTED = {"granian": "Started worker-", "uvicorn": "Application startup complete"}


def started(log: Path, server: str, count: int) -> None:
    """Waits until `count` server processes have started, in all (the server's own lines)."""
    deadline = time.monotonic() + 60
    while log.read_text().count(STARTED[server]) < count:
        assert time.monotonic() < deadline, f"the server did not start: {log.read_text()}"
        time.sleep(0.2)


@contextlib.contextmanager
def api_server(tmp_path: Path, redis_url: str, database_url: str, key_prefix: str,
               server: str, workers: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TOLLGATE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(TOLLGATE_REDIS_URL=redis_url, TOLLGATE_QUEUE_REDIS_URL=redis_url,
               TOLLGATE_DATABASE_URL=database_url, TOLLGATE_JWT_SECRET=SECRET,
               TOLLGATE_KEY_PREFIX=key_prefix, TOLLGATE_STORAGE_DIR=str(tmp_path / "files"),
               TOLLGATE_QUEUE_NAME=key_prefix, PYTHONPATH=str(ROOT),
               TMPDIR=str(tmp_path))  # where `tollgate api` makes its metrics folder
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli.main", "api", "--host", "127.0.0.1", "--port",
         str(port), "--workers", str(workers), "--server", server],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=60)
        started(tmp_path / "api.log", server, workers)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for child in children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def fresh(url: str) -> httpx.Client:
    """A new connection per request, so that the server's processes share them."""
    return httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def request_totals(url: str) -> tuple[float, float, float]:
    """(requests, duration observations, requests in progress) of one scrape, summed over
    every label set."""
    with fresh(url) as client:
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    totals = {"tollgate_requests": 0.0, "tollgate_request_duration_seconds": 0.0,
              "tollgate_requests_in_progress": 0.0}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name in ("tollgate_requests_total",
                               "tollgate_request_duration_seconds_count",
                               "tollgate_requests_in_progress"):
                totals[family.name] += sample.value
    return (totals["tollgate_requests"], totals["tollgate_request_duration_seconds"],
            totals["tollgate_requests_in_progress"])


def make_requests(url: str, count: int) -> None:
    """`count` requests, 6 at a time (so that every process gets some)."""
    with fresh(url) as client, ThreadPoolExecutor(6) as pool:
        paths = ["/health" if index % 3 else "/ready" for index in range(count)]
        statuses = list(pool.map(lambda path: client.get(path).status_code, paths))
    assert statuses == [200] * count


def counted_by(folder: Path) -> set[int]:
    """The processes that wrote request counters into the metrics folder."""
    return {int(path.stem.rsplit("_", 1)[1]) for path in folder.glob("counter_*.db")}


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_every_scrape_counts_the_requests_of_every_process(
        server: str, tmp_path: Path, redis_url: str, postgres_url: str, key_prefix: str,
        real_redis: object) -> None:
    run_migrations(postgres_url)
    with api_server(tmp_path, redis_url, postgres_url, key_prefix, server, 2) as (proc, url):
        [folder] = tmp_path.glob("tollgate-metrics-*")
        assert request_totals(url)[:2] == (0, 0)
        make_requests(url, 60)
        for _ in range(8):  # scrapes are not counted, so each one reads the same
            assert request_totals(url) == (60, 60, 0)
        assert len(counted_by(folder)) == 2  # both processes served some of the 60

        if server == "granian":
            # A process that dies keeps its counts in the sum; its replacement adds to them.
            workers = children(proc.pid)
            assert len(workers) == 2
            os.kill(workers[0], signal.SIGKILL)
            started(tmp_path / "api.log", server, 3)  # the two, then the new one
            make_requests(url, 30)
            for _ in range(6):
                assert request_totals(url) == (90, 90, 0)
    assert proc.returncode is not None
    assert not folder.exists()  # the server removed its metrics folder when it stopped


COUNT_AND_HOLD = """
import sys
from service.api.metrics import IN_PROGRESS, REQUESTS
REQUESTS.labels("GET", "/x", "200", "tollgate").inc(3)
IN_PROGRESS.labels("GET", "/x", "tollgate").inc()  # a request in flight when it dies
print("ready", flush=True)
sys.stdin.readline()
"""


def test_a_dead_process_keeps_its_counts_but_not_its_requests_in_progress(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.api.metrics import request_registry

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-c", COUNT_AND_HOLD], env=env, cwd=ROOT,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
            labels = {"method": "GET", "path": "/x", "app_name": "tollgate"}

            def scraped() -> tuple[float | None, float | None]:
                registry = request_registry()
                return (registry.get_sample_value("tollgate_requests_total",
                                                  {**labels, "status_code": "200"}),
                        registry.get_sample_value("tollgate_requests_in_progress", labels))

            assert scraped() == (3, 1)  # alive, its request still in flight
            proc.kill()
            proc.wait(timeout=10)
            assert scraped() == (3, None)  # its count stays; its request in flight is gone
        finally:
            if proc.poll() is None:
                proc.kill()
