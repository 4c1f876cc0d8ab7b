"""The baseline of bench/http_api.py: a Litestar app with one tiny handler and nothing else.

    python bench/bare_app.py --server granian --workers 1 --port 8001

It is served by `service.cli.serve.serve`, the function behind `tollgate api`, so the bare
endpoint and tollgate's endpoints run under the same server, process count and event loop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, get, post

if __package__ in (None, ""):  # run as `python bench/bare_app.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@get("/bare", sync_to_thread=False)
def bare() -> dict[str, object]:
    return {"ok": True, "service": "bare"}


class Echo(msgspec.Struct):
    idempotency_key: str
    event: str
    item_index: int | None = None
    ok: bool | None = None


@post("/bare", status_code=200)
async def bare_post(data: Echo) -> dict[str, object]:
    """The same, with a small JSON body read and validated: what any POST endpoint pays."""
    return {"ok": True, "service": "bare", "event": data.event}


@post("/bare/any", status_code=200)
async def bare_post_any(data: dict[str, Any]) -> dict[str, object]:
    """Any JSON object, decoded and dropped: the bare POST that bench/http_api.py sends the
    very body of a tollgate POST row to (a POST /jobs body, an 8-item batched report), so
    the two differ only in what tollgate does with it."""
    return {"ok": True, "service": "bare", "fields": len(data)}


def create_app() -> Litestar:
    return Litestar(route_handlers=[bare, bare_post, bare_post_any], debug=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server", choices=["granian", "uvicorn"], default="granian")
    args = parser.parse_args(argv)
    from service.cli.serve import serve

    serve("bench.bare_app:create_app", host=args.host, port=args.port, workers=args.workers,
          server=args.server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
