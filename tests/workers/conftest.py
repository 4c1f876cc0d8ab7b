"""A fake tollgate API and storage on one threaded HTTP server, for driving real batches.

It serves inputs at /in/<name>, takes outputs at PUT /out/<name> and records every callback
at POST /jobs/<id>/callback. Switches on the instance script its refusals: 503s, 409s, 401s.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from service.settings import get_settings

TOKEN = "callback-secret-token"


@dataclass
class FakeApi:
    base_url: str = ""
    inputs: dict[str, bytes] = field(default_factory=dict)
    outputs: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    auth_seen: list[str] = field(default_factory=list)
    fail_callbacks: int = 0
    closed: bool = False
    close_on_heartbeat: bool = False
    close_after_items: int | None = None
    download_barrier: threading.Barrier | None = None
    upload_barrier: threading.Barrier | None = None
    heartbeat_seen: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def input_url(self, name: str) -> str:
        return f"{self.base_url}/in/{name}"

    def output_url(self, name: str) -> str:
        return f"{self.base_url}/out/{name}"

    def callback_url(self, job_id: str) -> str:
        return f"{self.base_url}/jobs/{job_id}/callback"

    def events(self) -> list[str]:
        return [body["event"] for body in self.callbacks]

    def item_reports(self) -> list[dict[str, Any]]:
        """Every item's report, whether sent alone (`item`) or in a batch (`items`), in the
        shape of an `item` event."""
        reports = []
        for body in self.callbacks:
            if body["event"] == "item":
                reports.append(body)
            elif body["event"] == "items":
                reports.extend({**{k: v for k, v in entry.items() if k != "index"},
                                "event": "item", "item_index": entry["index"]}
                               for entry in body["items"])
        return reports

    def answer_callback(self, body: dict[str, Any], auth: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.attempts.append(body)
            self.auth_seen.append(auth)
            if auth != f"Bearer {TOKEN}":
                return 401, {"status": 401, "detail": "bad token"}
            if self.fail_callbacks > 0:
                self.fail_callbacks -= 1
                return 503, {"status": 503, "detail": "try later"}
            if body["event"] == "heartbeat" and self.close_on_heartbeat:
                self.closed = True
            if self.closed:
                return 409, {"status": 409, "code": "invalid_transition", "detail": "canceled"}
            self.callbacks.append(body)
            if body["event"] == "heartbeat":
                self.heartbeat_seen.set()
            items = len(self.item_reports())
            if self.close_after_items is not None and items >= self.close_after_items:
                self.closed = True
            if body["event"] == "items":
                return 200, {"counted": len(body["items"]), "duplicates": 0,
                             "status": "running", "done_items": items, "failed_items": 0}
            return 200, {"duplicate": False, "status": "running", "done_items": items,
                         "failed_items": 0}


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without this, Nagle + delayed ACK add
        # 40 ms to every request.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:
            if api.download_barrier is not None:
                api.download_barrier.wait(timeout=30)
            name = self.path.removeprefix("/in/")
            data = api.inputs.get(name)
            if data is None:
                self._send(404, b'{"detail": "no such input"}')
            else:
                self._send(200, data, "application/octet-stream")

        def do_PUT(self) -> None:
            data = self._body()
            if api.upload_barrier is not None:
                api.upload_barrier.wait(timeout=30)
            with api.lock:
                api.outputs[self.path.removeprefix("/out/")] = (
                    self.headers.get("Content-Type", ""), data)
            self._send(200, b"")

        def do_POST(self) -> None:
            body = json.loads(self._body())
            status, answer = api.answer_callback(body, self.headers.get("Authorization", ""))
            self._send(status, json.dumps(answer).encode())

    return Handler


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    api.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield api
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def processor_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Sets TOLLGATE_PROCESSOR for code that reads get_settings(); restores it after."""

    def use(spec: str) -> None:
        monkeypatch.setenv("TOLLGATE_PROCESSOR", spec)
        get_settings.cache_clear()

    yield use
    get_settings.cache_clear()


@pytest.fixture
def sync_redis(redis_url: str, key_prefix: str) -> Iterator[Any]:
    """A bytes client on the shared Redis; deletes every RQ key naming `key_prefix` after."""
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    for key in client.scan_iter(match=f"rq:*{key_prefix}*", count=1000):
        client.delete(key)
    client.srem("rq:queues", f"rq:queue:{key_prefix}")
    client.close()


def unique_job_id(key_prefix: str) -> str:
    return f"{key_prefix}-{uuid.uuid4().hex[:8]}"


def enqueue_text_items(queue: Any, api: FakeApi, job_id: str, count: int, *,
                       timeout_s: int = 120) -> list[str]:
    """A job of `count` text items, their inputs served by `api`, enqueued in batches of 2;
    the RQ job ids."""
    from service.contract import BatchItem
    from service.state.queue import enqueue_job

    items = []
    for index in range(count):
        name = f"{job_id}-{index}"
        api.inputs[name] = f"data {index}".encode()
        items.append(BatchItem(index, name, "text/plain", api.input_url(name),
                               api.output_url(name), f"out/{index}"))
    return enqueue_job(queue, job_id=job_id, callback_url=api.callback_url(job_id),
                       callback_token=TOKEN, items=items, batch_size=2, lease_ttl_s=30,
                       timeout_s=timeout_s)
