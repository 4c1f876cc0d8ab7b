"""A real webhook receiver for the tests: an HTTP server on a free port, in a thread.

Each request takes the next planned answer (a status, or `Hang(seconds)` to stay silent);
after the plan, it answers 200. Every request is kept with its headers and raw body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conftest import free_port


@dataclass(frozen=True)
class Hang:
    seconds: float


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    plan: list[int | Hang] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/tollgate"
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                receiver.requests.append(Received(
                    {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()))
                receiver.arrived.set()
                answer = receiver.plan.pop(0) if receiver.plan else 200
                if isinstance(answer, Hang):
                    time.sleep(answer.seconds)
                    return  # the connection closes without an answer
                self.send_response(answer)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        # serve_forever's poll interval: shutdown() waits for the next poll (0.5 s by default).
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify(secret: str, received: Received) -> bool:
    """The receiver's side of Standard Webhooks, written from the specification."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = (f"{received.headers['webhook-id']}.{received.headers['webhook-timestamp']}."
              .encode() + received.body)
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(f"v1,{expected}", sig)
               for sig in received.headers["webhook-signature"].split(" "))
