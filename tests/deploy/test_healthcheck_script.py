"""deploy/healthcheck.py, the image's health check script: a worker of this host, an HTTP
check with basic auth from the environment, and the flusher's lag read from /metrics."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fakeredis
import pytest
from rq import Queue, Worker

from tests.deploy.artefacts import healthcheck_module


def test_worker_check_sees_only_a_live_worker_of_this_host() -> None:
    health = healthcheck_module()
    connection = fakeredis.FakeRedis()
    host = socket.gethostname()
    assert health.registered_worker_names(connection, host) == []
    worker = Worker([Queue("gpu", connection=connection)], connection=connection,
                    name="tollgate-worker-1")
    worker.register_birth()
    assert health.registered_worker_names(connection, host) == ["tollgate-worker-1"]
    assert health.registered_worker_names(connection, "another-container") == []
    connection.delete(worker.key)  # the heartbeat key expired: a hung or killed worker
    assert health.registered_worker_names(connection, host) == []
    worker.register_birth()
    worker.register_death()  # a clean stop
    assert health.registered_worker_names(connection, host) == []


class _Handler(BaseHTTPRequestHandler):
    metrics = ""
    password = "pw"

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._answer(200, self.metrics)
            return
        expected = "Basic " + base64.b64encode(f"admin:{self.password}".encode()).decode()
        self._answer(200 if self.headers.get("Authorization") == expected else 401, "")

    def _answer(self, status: int, body: str) -> None:
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_check_sends_basic_auth_from_the_environment(
        http_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    health = healthcheck_module()
    monkeypatch.setenv("DASH_USER", "admin")
    monkeypatch.setenv("DASH_PASSWORD", "pw")
    assert health.main(["http", f"{http_server}/", "--auth-env", "DASH_USER:DASH_PASSWORD"]) == 0
    monkeypatch.setenv("DASH_PASSWORD", "wrong")
    assert health.main(["http", f"{http_server}/", "--auth-env", "DASH_USER:DASH_PASSWORD"]) == 1
    assert health.main(["http", "http://127.0.0.1:1/"]) == 1


@pytest.mark.parametrize(("metrics", "healthy"), [
    ("# TYPE tollgate_flush_lag_seconds gauge\ntollgate_flush_lag_seconds 12.5\n", True),
    ("tollgate_flush_lag_seconds 301\n", False),
    ('tollgate_flush_lag_seconds{bucket="7"} 2\ntollgate_flush_lag_seconds{bucket="9"} 400\n',
     False),
    ("tollgate_flush_lag_seconds_other 1\n", False),  # the gauge is missing
])
def test_flush_lag_check(http_server: str, monkeypatch: pytest.MonkeyPatch, metrics: str,
                         healthy: bool) -> None:
    monkeypatch.setattr(_Handler, "metrics", metrics)
    code = healthcheck_module().main(["flush-lag", f"{http_server}/metrics", "--max-lag", "300"])
    assert code == (0 if healthy else 1)
