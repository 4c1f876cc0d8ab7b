"""Issue 23, item 5: a worker's memory is bounded by TOLLGATE_WORKER_MAX_BATCH_BYTES, not by
its inputs. Four 300 MiB junk items (what took the worker from 79 MB to 2.37 GB of RSS) run
through the real job function (`workers.jobs.process_batch`, the default thumbnail
processor) in a subprocess of its own, so its peak RSS (VmHWM) is its own; the inputs
are sparse files of a local folder, served as a storage serves them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from service.contract import BatchItem, batch_payload

MIB = 1024 * 1024
ITEM_BYTES = 300 * MIB
MAX_RSS_BYTES = 300 * 1000 * 1000
JOB_ID = "01memory00000000000000000000-1"

# The child: the RQ entry point on one batch, then its summary and peak RSS. VmHWM, the peak
# of the child's own address space: getrusage's ru_maxrss survives fork and exec on Linux,
# so it starts at the RSS of the pytest process that forked it (330 MB once torch is loaded
# by an earlier test).
CHILD = """
import json, sys
from workers.jobs import process_batch
summary = process_batch(json.loads(sys.stdin.read()))
with open("/proc/self/status") as status:
    kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"summary": summary, "max_rss": kib * 1024}))
"""


class FolderServer:
    """Inputs from a folder (GET /in/<name>, streamed), outputs and callbacks taken."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.callbacks: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"{}") -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = server.folder / self.path.removeprefix("/in/")
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(path.stat().st_size))
                self.end_headers()
                with path.open("rb") as file, contextlib.suppress(BrokenPipeError,
                                                                   ConnectionResetError):
                    shutil.copyfileobj(file, self.wfile, MIB)

            def do_PUT(self) -> None:
                left = int(self.headers.get("Content-Length") or 0)
                while left > 0:
                    left -= len(self.rfile.read(min(left, MIB)))
                self._answer(200, b"")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.callbacks.append(body)
                self._answer(200, json.dumps({
                    "duplicate": False, "status": "running", "done_items": 0,
                    "failed_items": 0, "counted": len(body.get("items") or []),
                    "duplicates": 0}).encode())

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def folder_server(tmp_path: Path) -> Iterator[FolderServer]:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index in range(4):
        with (inputs / f"{index}.png").open("wb") as file:
            file.truncate(ITEM_BYTES)  # sparse: no disk used, reads as zeros
    server = FolderServer(inputs)
    yield server
    server.close()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_four_300_mib_items_keep_the_worker_under_300_mb(
    folder_server: FolderServer, tmp_path: Path
) -> None:
    base = folder_server.base_url
    items = [BatchItem(index, f"{index}.png", "image/png", f"{base}/in/{index}.png",
                       f"{base}/out/{index}", f"jobs/{JOB_ID}/out/{index}", size=ITEM_BYTES)
             for index in range(4)]
    payload = batch_payload(job_id=JOB_ID, batch_no=0, callback_token="token", lease_ttl_s=60,
                            callback_url=f"{base}/jobs/{JOB_ID}/callback", items=items)
    spool = tmp_path / "spool"
    spool.mkdir()
    env = {**os.environ, "TMPDIR": str(spool),
           "TOLLGATE_PROCESSOR": "workers.processors.thumbnail:make_thumbnails"}
    env.pop("TOLLGATE_WORKER_MAX_BATCH_BYTES", None)  # the default bound
    child = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(payload), env=env,
                           capture_output=True, text=True, timeout=300, check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])

    # Every junk item failed as an image (not as a download), and each was reported.
    assert result["summary"]["failed"] == 4 and result["summary"]["stopped"] is None
    reported = [entry for body in folder_server.callbacks if body["event"] == "items"
                for entry in body["items"]]
    assert sorted(entry["index"] for entry in reported) == [0, 1, 2, 3]
    assert all("cannot make a thumbnail" in entry["error"] for entry in reported), reported
    # Groups of the default 256 MiB bound: a 300 MiB item runs alone, one report each.
    assert len([body for body in folder_server.callbacks if body["event"] == "items"]) == 4
    print(f"worker peak RSS: {result['max_rss'] / 1e6:.0f} MB")
    assert result["max_rss"] < MAX_RSS_BYTES, f"peak RSS {result['max_rss'] / 1e6:.0f} MB"
    assert list(spool.iterdir()) == []  # every spool file is gone
