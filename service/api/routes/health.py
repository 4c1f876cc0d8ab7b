from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency
from sqlalchemy import text

from service.api.problems import problem
from service.runtime import Runtime


@get("/health", tags=["operations"])
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", tags=["operations"])
async def ready(rt: NamedDependency[Runtime]) -> Response[Any]:
    failures = {}
    try:
        await rt.core.ping()  # a script, not PING: proves the scripting engine answers
    except Exception as exc:
        failures["redis"] = f"{type(exc).__name__}: {exc}"[:300]
    try:
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        failures["database"] = f"{type(exc).__name__}: {exc}"[:300]
    if failures:
        return problem(503, "not_ready", "A dependency is not answering", failures=failures)
    return Response({"status": "ready"})
