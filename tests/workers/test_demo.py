"""`tollgate demo` against a scripted fake API: the client flow, the bar, the exit codes."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from service.cli.demo import progress_label, run_demo
from service.client import Job

TOKEN = "user-token"


@dataclass
class ScriptedApi:
    base_url: str = ""
    final_status: str = "done"
    polls_until_final: int = 2
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    uploads: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    polls: int = 0

    def job(self) -> dict[str, Any]:
        finished = self.polls >= self.polls_until_final
        status = self.final_status if finished else "running"
        done = 8 if finished and status == "done" else min(self.polls * 3, 8)
        return {"id": "J-1", "status": status, "total_items": 8, "done_items": done,
                "failed_items": 0, "cost": 8, "charged": done if finished else 0,
                "refunded": 8 - done if finished else 0,
                "items": [{"index": i, "status": "ok", "result_url": f"http://r/{i}"}
                          for i in range(8)]}


def _handler(api: ScriptedApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _read(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self) -> None:
            body = self._read()
            api.requests.append(("POST", self.path, self.headers.get("Authorization", "")))
            if self.path == "/jobs":
                items = json.loads(body)["items"]
                uploads = [{"index": n, "url": f"/upload/{n}", "method": "PUT",
                            "headers": {"Content-Type": "image/png", "X-Signed": "yes"},
                            "expires_at": "2030-01-01T00:00:00Z"} for n in range(len(items))]
                self._reply(201, {"id": "J-1", "status": "created", "total_items": len(items),
                                  "cost": len(items), "uploads": uploads})
            elif self.path == "/jobs/J-1/confirm-upload":
                self._reply(200, {"id": "J-1", "status": "uploaded"})
            elif self.path == "/jobs/J-1/execute":
                self._reply(202, {"id": "J-1", "status": "queued"})
            else:
                self._reply(404, {"status": 404, "code": "not_found", "detail": self.path})

        def do_PUT(self) -> None:
            data = self._read()
            api.requests.append(("PUT", self.path, self.headers.get("Authorization", "")))
            if self.headers.get("X-Signed") != "yes":
                self._reply(403, {"detail": "signature headers missing"})
                return
            api.uploads[int(self.path.rsplit("/", 1)[1])] = (self.headers["Content-Type"], data)
            self._reply(200, {})

        def do_GET(self) -> None:
            api.requests.append(("GET", self.path, self.headers.get("Authorization", "")))
            api.polls += 1
            self._reply(200, api.job())

    return Handler


@pytest.fixture
def scripted_api() -> Iterator[ScriptedApi]:
    api = ScriptedApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    api.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield api
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_demo_runs_the_whole_client_flow(scripted_api: ScriptedApi,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(scripted_api.base_url, TOKEN) == 0

    calls = [(method, path) for method, path, _ in scripted_api.requests]
    assert calls[0] == ("POST", "/jobs")
    assert sorted(calls[1:9]) == [("PUT", f"/upload/{n}") for n in range(8)]
    assert calls[9:11] == [("POST", "/jobs/J-1/confirm-upload"), ("POST", "/jobs/J-1/execute")]
    assert set(calls[11:]) == {("GET", "/jobs/J-1")}
    for method, _, auth in scripted_api.requests:
        assert auth == ("" if method == "PUT" else f"Bearer {TOKEN}")
    for content_type, data in scripted_api.uploads.values():
        assert content_type == "image/png"
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"
    assert len({data for _, data in scripted_api.uploads.values()}) == 8

    out, err = capsys.readouterr()
    # rich's bar, printed once (no terminal here): no carriage return, no leftover text.
    assert "\r" not in err
    bar = [line for line in err.splitlines() if "8/8" in line]
    assert len(bar) == 1 and bar[0].startswith("done ") and "━" in bar[0], err
    assert "charged 8, refunded 0" in out
    assert "http://r/7" in out


def test_a_failed_job_exits_nonzero(scripted_api: ScriptedApi,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    scripted_api.final_status = "failed"
    assert run_demo(scripted_api.base_url, TOKEN, items=3) == 1
    assert "failed" in capsys.readouterr().out


def test_a_job_that_never_ends_times_out_with_a_hint(scripted_api: ScriptedApi,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    scripted_api.polls_until_final = 10**9
    assert run_demo(scripted_api.base_url, TOKEN, items=2, timeout_s=0.3) == 1
    err = capsys.readouterr().err
    assert "still running after 0 s" in err and "tollgate worker" in err


def test_unreachable_api_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_port

    assert run_demo(f"http://127.0.0.1:{free_port()}", TOKEN) == 1
    assert "cannot talk to" in capsys.readouterr().err


def test_progress_label_is_padded_so_a_shorter_status_leaves_nothing_behind() -> None:
    labels = [progress_label(Job(id="J", total_items=4, status=status))
              for status in ("queued", "running", "done")]
    assert {len(label) for label in labels} == {8}
    assert [label.strip() for label in labels] == ["queued", "running", "done"]
