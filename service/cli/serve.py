"""Runs an ASGI app factory under granian or uvicorn with N processes."""

from __future__ import annotations

from typing import Any, Literal

from service.settings import Settings, get_settings


def granian_options(settings: Settings) -> dict[str, Any]:
    """Connection limits for granian. Its HTTP/1 header read timeout (hyper's) also runs while
    a keep-alive connection waits for its next request, so it is the idle timeout too. The
    body read timeout is the app's own (service.api.connections): granian has none."""
    from granian.http import HTTP1Settings

    return {"http1_settings": HTTP1Settings(
        header_read_timeout=settings.keepalive_timeout * 1000, keep_alive=True)}


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Connection limits for uvicorn: idle keep-alive connections close after the timeout;
    the body read timeout is the app's own (uvicorn has none)."""
    return {"timeout_keep_alive": settings.keepalive_timeout}


def serve(factory: str, *, host: str, port: int, workers: int,
          server: Literal["granian", "uvicorn"] = "granian",
          settings: Settings | None = None) -> None:
    settings = settings or get_settings()
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
