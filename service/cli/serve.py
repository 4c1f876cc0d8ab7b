"""Runs an ASGI app factory under granian or uvicorn with N processes."""

from __future__ import annotations

from typing import Literal


def serve(factory: str, *, host: str, port: int, workers: int,
          server: Literal["granian", "uvicorn"] = "granian") -> None:
    if server == "granian":
        from granian import Granian
        from granian.constants import Interfaces

        Granian(factory, address=host, port=port, interface=Interfaces.ASGI, workers=workers,
                factory=True, respawn_failed_workers=True).serve()
        return
    import uvicorn

    uvicorn.run(factory, host=host, port=port, workers=workers, factory=True,
                log_level="info", access_log=False)
