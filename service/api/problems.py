"""RFC 9457 problem documents with a stable `code` for every refusal, and never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    SerializationException,
    ValidationException,
)
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import TollgateError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}


def problem(
    status: int, code: str, title: str, detail: str | None = None, **extra: Any
) -> Response[Any]:
    body: dict[str, Any] = {"type": f"https://tollgate.dev/problems/{code}", "title": title,
                            "status": status, "code": code}
    if detail and detail != title:
        body["detail"] = detail
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _tollgate_error(_: Request[Any, Any, Any], exc: TollgateError) -> Response[Any]:
    extra = {k: v for k, v in exc.extra.items() if k != "reply"}
    return problem(exc.status, exc.code, exc.title, exc.detail, **extra)


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    errors = exc.extra if isinstance(exc.extra, list) else None
    status = 400 if "JSON" in (exc.detail or "") and not errors else 422
    code = "malformed_json" if status == 400 else "validation_error"
    return problem(status, code, "Invalid request", exc.detail, errors=errors or [])


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status >= 500:
        return problem(status, "internal_error", "Internal error")
    if status == 400 and isinstance(exc.__cause__, SerializationException):
        return problem(400, "malformed_json", "The body is not valid JSON", exc.detail)
    code = _HTTP_CODES.get(status, "http_error")
    return problem(status, code, code.replace("_", " ").capitalize(), exc.detail)


def _store_unreachable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # Redis is down or restarting: the client (and a worker posting a callback) should
    # retry, not report a bug. Every operation is safe to retry.
    log.warning("%s %s: Redis unreachable: %s", request.method, request.url.path, exc)
    response = problem(503, "unavailable", "Service unavailable",
                       "the state store is unreachable; retry shortly")
    response.headers["Retry-After"] = "1"
    return response


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "Internal error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    TollgateError: _tollgate_error,
    ValidationException: _validation,
    NotAuthorizedException: _http,
    PermissionDeniedException: _http,
    NotFoundException: _http,
    HTTPException: _http,
    RedisConnectionError: _store_unreachable,  # includes BusyLoadingError (Redis starting)
    RedisTimeoutError: _store_unreachable,
    Exception: _unexpected,
}
