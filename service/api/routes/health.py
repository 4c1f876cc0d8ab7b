from __future__ import annotations

import logging

from litestar import Response, get
from litestar.di import NamedDependency
from sqlalchemy import text

from service.api.openapi import refusals
from service.api.problems import problem
from service.api.schemas import Status
from service.errors import NotReady
from service.runtime import Runtime

log = logging.getLogger(__name__)


@get("/health", tags=["operations"], security=[{}], responses=refusals(user=False))
async def health() -> Status:
    return Status(status="ok")


@get("/ready", tags=["operations"], security=[{}], responses=refusals(NotReady, user=False))
async def ready(rt: NamedDependency[Runtime]) -> Response[Status]:
    # Unauthenticated: it names the part that failed, never a host, port or error text
    # (those go to the log).
    checks = {"redis": "ok", "sql": "ok"}
    try:
        await rt.core.ping()  # a script, not PING: proves the scripting engine answers
    except Exception as exc:
        log.warning("ready: redis: %s: %s", type(exc).__name__, exc)
        checks["redis"] = "unavailable"
    try:
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("ready: sql: %s: %s", type(exc).__name__, exc)
        checks["sql"] = "unavailable"
    failures = {part: state for part, state in checks.items() if state != "ok"}
    if failures:
        response = problem(NotReady.status, NotReady.code, NotReady.title,
                           failures=failures, checks=checks)
        response.headers["Retry-After"] = "2"
        return response
    return Response(Status(status="ready"))
