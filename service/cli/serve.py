"""Runs an ASGI app factory under granian or uvicorn with N processes.

The processes share their request metrics through prometheus_client's multiprocess mode:
`serve` points PROMETHEUS_MULTIPROC_DIR at a fresh folder before the server starts its
processes (they inherit it, and each writes its samples to files there), and every scrape,
whichever process answers it, sums the files of all of them (service.api.metrics). The
folder is removed when the server stops; one the operator set is used as it is (it must be
empty at start).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, Literal

from service.settings import Settings, get_settings


def granian_options(settings: Settings) -> dict[str, Any]:
    """Connection limits for granian. Its HTTP/1 header read timeout (hyper's) also runs while
    a keep-alive connection waits for its next request, so it is the idle timeout too. The
    body read timeout is the app's own (service.api.connections): granian has none.

    granian's `backpressure` is a slot per connection, taken at accept and held until the
    connection closes, idle or not (its default, 1,024 per process, is what 2,000 idle
    connections from one client filled). Each process gets `max_connections` slots, as many
    as its open-file limit allows; one client's requests in flight are capped far below
    that (service.api.client_cap)."""
    from granian.http import HTTP1Settings

    return {"backpressure": connection_slots(settings.max_connections),
            "http1_settings": HTTP1Settings(
                header_read_timeout=settings.keepalive_timeout * 1000, keep_alive=True)}


FILES_KEPT = 256  # descriptors left to the process itself (Redis, SQL, logs, temp files)


def connection_slots(wanted: int) -> int:
    """`wanted`, or fewer if the open-file limit cannot be raised to hold them: the soft
    limit goes up to the hard one first (the server processes inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FILES_KEPT
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - FILES_KEPT))


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Connection limits for uvicorn: idle keep-alive connections close after the timeout;
    the body read timeout is the app's own (uvicorn has none)."""
    return {"timeout_keep_alive": settings.keepalive_timeout}


MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def shared_metrics() -> Iterator[str]:
    """PROMETHEUS_MULTIPROC_DIR for this process and the ones it starts, while it serves."""
    given = os.environ.get(MULTIPROC_DIR)
    if given:
        yield given
        return
    if "service.api.metrics" in sys.modules:
        # prometheus_client picks per-process or file-backed values when a metric is made;
        # forked server processes would inherit per-process ones and no scrape would see them.
        raise RuntimeError("service.api.metrics was imported before the metrics folder was set")
    path = tempfile.mkdtemp(prefix="tollgate-metrics-")
    os.environ[MULTIPROC_DIR] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_DIR, None)
        shutil.rmtree(path, ignore_errors=True)


def serve(factory: str, *, host: str, port: int, workers: int,
          server: Literal["granian", "uvicorn"] = "granian",
          settings: Settings | None = None) -> None:
    with shared_metrics():
        _serve(factory, host=host, port=port, workers=workers, server=server,
               settings=settings or get_settings())


def _serve(factory: str, *, host: str, port: int, workers: int,
           server: Literal["granian", "uvicorn"], settings: Settings) -> None:
    if server == "granian":
        from granian import Granian
        from granian.constants import Interfaces

        Granian(factory, address=host, port=port, interface=Interfaces.ASGI, workers=workers,
                factory=True, respawn_failed_workers=True,
                **granian_options(settings)).serve()
        return
    import uvicorn

    uvicorn.run(factory, host=host, port=port, workers=workers, factory=True,
                log_level="info", access_log=False, **uvicorn_options(settings))
