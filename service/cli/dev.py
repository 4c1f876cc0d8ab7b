"""`tollgate dev`: the API, a worker and the flusher in one process.

With no services named in the environment it runs on the embedded defaults: fakeredis with
Lua in this process, SQLite, a local folder. A forking RQ worker cannot share in-process
fakeredis, so the worker is a SimpleWorker loop in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading

import uvicorn

from service.api.app import create_app
from service.api.auth import issue_token
from service.cli.serve import uvicorn_options
from service.cli.startup import (
    default_public_url,
    generated_secret,
    processor_problem,
    redis_or_exit,
)
from service.flusher.loop import run_flusher_with_requeue
from service.history.engine import run_migrations
from service.settings import Settings

log = logging.getLogger(__name__)


def _describe(settings: Settings) -> list[str]:
    return [
        "state:   " + ("embedded fakeredis (in this process; gone when it stops)"
                       if settings.embedded_redis else settings.redis_url or ""),
        "history: " + settings.database_url.split("@")[-1],
        "storage: " + (f"local folder {os.path.abspath(settings.storage_dir)}"
                       if settings.embedded_storage else f"S3 {settings.s3_endpoint}"),
    ]


class FlusherThread(threading.Thread):
    """The flusher on its own event loop; `stop()` ends it after the pass in hand."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="tollgate-flusher", daemon=True)
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_flusher: asyncio.Event | None = None
        self._loop_ready = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._stop_flusher = asyncio.get_running_loop(), asyncio.Event()
        self._loop_ready.set()
        try:
            await run_flusher_with_requeue(self.settings, once=False, stop=self._stop_flusher)
        except Exception:
            log.exception("the flusher stopped on an error")

    def stop(self, timeout: float = 10.0) -> None:
        self._loop_ready.wait(timeout)
        loop, stop = self._loop, self._stop_flusher
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # its loop ended already
                loop.call_soon_threadsafe(stop.set)
        self.join(timeout)


def listening_socket(host: str, port: int) -> socket.socket:
    """The API's socket, bound before anything is printed: a taken port ends the start with
    one line (exit 2) instead of a banner followed by uvicorn's error."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        print(f"tollgate dev: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        print(f"tollgate dev: port {port} on {host} is taken ({exc.strerror}): stop what "
              f"listens there, or pick another port: tollgate dev --port {port + 1}",
              file=sys.stderr)
        raise SystemExit(2) from None
    sock.set_inheritable(True)
    return sock


def run_dev(*, host: str, port: int) -> int:
    sock = listening_socket(host, port)
    overrides: dict[str, object] = {}
    if not os.environ.get("TOLLGATE_JWT_SECRET"):
        overrides["jwt_secret"] = generated_secret()
    if not os.environ.get("TOLLGATE_PUBLIC_URL"):
        overrides["public_url"] = default_public_url(host, port)
    settings = Settings(**overrides)  # type: ignore[arg-type]
    assert settings.jwt_secret
    redis_or_exit(settings)
    run_migrations(settings.database_url)

    from service.models import load_models
    from service.state.clients import queue_redis
    from service.state.embedded_tcp import EmbeddedRedisOverTcp
    from workers.runner import start_embedded_worker_thread

    server: uvicorn.Server | None = None
    stopping = False

    def on_signal(signum: int, _: object) -> None:
        # Uvicorn takes SIGINT/SIGTERM while it serves and raises the signal again once it
        # stopped: this handler then lets the stop below run instead of killing the process.
        nonlocal stopping
        stopping = True
        if server is not None:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    # A worker thread per model queue, each with its model's processor; a model whose
    # processor cannot be loaded here is marked unavailable (its jobs are refused, 503).
    models = load_models(settings)
    unavailable: list[str] = []
    served: dict[str, str] = {}
    for model in models:
        problem = processor_problem(model.name, model.processor, setup=True)
        if problem is None:
            served[model.queue] = model.processor
        else:
            models.mark_unavailable(model.name, problem)
            unavailable.append(problem)
    workers = [start_embedded_worker_thread(settings, queue_redis(settings), queue, processor)
               for queue, processor in served.items()]
    flusher = FlusherThread(settings)
    flusher.start()
    # The embedded state, readable from other processes (`tollgate inspect`).
    over_tcp = EmbeddedRedisOverTcp() if settings.embedded_redis else None

    token = issue_token(settings.jwt_secret, "dev-user", ttl_s=7 * 86400)
    admin = issue_token(settings.jwt_secret, "dev-admin", admin=True, ttl_s=7 * 86400)
    inspect_env = f"TOLLGATE_REDIS_URL={over_tcp.url} " if over_tcp is not None else ""
    lines = [
        "tollgate dev: API + worker + flusher in one process",
        *("  " + line for line in _describe(settings)),
        f"  API:     {settings.public_url}   (OpenAPI: {settings.public_url}/schema)",
        f"  secret:  TOLLGATE_JWT_SECRET={settings.jwt_secret}",
        f"  token:   {token}",
        f"  admin:   {admin}",
        *(f"  UNAVAILABLE {problem}" for problem in unavailable),
        "next, in another shell (the docs' examples read these three variables):",
        f"  export TG_URL={settings.public_url} TG_TOKEN={token} TG_ADMIN={admin}",
        '  curl -s -H "Authorization: Bearer $TG_TOKEN" $TG_URL/me',
        '  tollgate demo --url $TG_URL --token $TG_TOKEN',
        f"  {inspect_env}tollgate inspect user dev-user",
    ]
    print("\n".join(lines), flush=True)
    try:
        if not stopping:
            server = uvicorn.Server(uvicorn.Config(
                create_app(settings), host=host, port=port, log_level="warning",
                **uvicorn_options(settings)))
            server.run(sockets=[sock])
    finally:
        for worker in workers:
            worker.stop()
        flusher.stop()
        if over_tcp is not None:
            over_tcp.close()
        sock.close()
        print("tollgate dev: stopped", flush=True)
    return 0
