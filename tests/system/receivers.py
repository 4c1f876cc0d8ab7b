"""Webhook receivers in the test process: small HTTP servers that record every delivery
attempt. Two answer 200 at once, one always 500, one hangs past the webhook timeout."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GOOD = ("good-1", "good-2")
FAILING, HANGING = "failing", "hanging"
NAMES = (*GOOD, FAILING, HANGING)


@dataclass(frozen=True, slots=True)
class Attempt:
    receiver: str
    webhook_id: str
    type: str
    job_id: str
    job_status: str
    at: float  # monotonic, when it arrived
    wall: float  # the same as Unix time, to set against the job's finished_at


@dataclass
class Receivers:
    hang_s: float
    attempts: list[Attempt] = field(default_factory=list)
    _servers: dict[str, ThreadingHTTPServer] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str) -> str:
        host, port = self._servers[name].server_address[:2]
        return f"http://{host!s}:{port}/hooks/{name}"

    def start(self) -> None:
        for name in NAMES:
            server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(name))
            server.daemon_threads = True
            server.block_on_close = False
            self._servers[name] = server
            threading.Thread(target=server.serve_forever, name=f"receiver-{name}",
                             daemon=True).start()

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()

    def of(self, job_id: str) -> list[Attempt]:
        with self._lock:
            return [a for a in self.attempts if a.job_id == job_id]

    def _record(self, attempt: Attempt) -> None:
        with self._lock:
            self.attempts.append(attempt)

    def _handler(self, name: str) -> type[BaseHTTPRequestHandler]:
        receivers = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload: dict[str, Any] = json.loads(raw)
                    data = payload.get("data") or {}
                    receivers._record(Attempt(
                        name, self.headers.get("webhook-id", ""), str(payload.get("type")),
                        str(data.get("id")), str(data.get("status")), time.monotonic(),
                        time.time()))
                except ValueError:
                    receivers._record(Attempt(name, "", "unreadable", "", "", time.monotonic(),
                                              time.time()))
                if name == HANGING:
                    time.sleep(receivers.hang_s)
                status = 500 if name == FAILING else 200
                with contextlib.suppress(OSError):  # the sender may have given up on us
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
