"""The baseline of bench/http_api.py and bench/sse.py: a Litestar app with tiny handlers and
nothing else, served by the same server (granian or uvicorn, from their own command lines)
with the same process count as `tollgate api` (bench.harness.Stack.bare).

    granian --interface asgi --factory bench.bare_app:create_app
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, get, post


@get("/bare", sync_to_thread=False)
def bare() -> dict[str, object]:
    return {"ok": True, "service": "bare"}


@post("/bare/any", status_code=200)
async def bare_post_any(data: dict[str, Any]) -> dict[str, object]:
    """Any JSON object, decoded and dropped: sent the very body of a tollgate POST (a POST
    /jobs body, an 8-item batched report), so the two differ only in what tollgate does."""
    return {"ok": True, "service": "bare", "fields": len(data)}


def create_app() -> Litestar:
    return Litestar(route_handlers=[bare, bare_post_any], debug=False)
