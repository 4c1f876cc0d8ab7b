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
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLTimeoutError

from service.api.responses import JsonResponse
from service.errors import (
    BadArgument,
    Forbidden,
    InternalError,
    MalformedJson,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    TollgateError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from service.state.clients import UNREACHABLE_ERRORS

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# Litestar's own refusals (a missing token, an unknown route...) get the code of the
# service.errors class for their status.
_HTTP_ERRORS: dict[int, type[TollgateError]] = {cls.status: cls for cls in (
    TollgateError, Unauthorized, Forbidden, NotFound, MethodNotAllowed, PayloadTooLarge,
    UnsupportedMediaType, BadArgument, TooManyRequests, Unavailable)}


def problem(
    status: int, code: str, title: str, detail: str | None = None, **extra: Any
) -> Response[Any]:
    body: dict[str, Any] = {"type": f"https://tollgate.dev/problems/{code}", "title": title,
                            "status": status, "code": code}
    if detail and detail != title:
        body["detail"] = detail
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JsonResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _tollgate_error(_: Request[Any, Any, Any], exc: TollgateError) -> Response[Any]:
    extra = {k: v for k, v in exc.extra.items() if k != "reply"}
    return problem(exc.status, exc.code, exc.title, exc.detail, **extra)


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    errors = exc.extra if isinstance(exc.extra, list) else None
    error = MalformedJson if "JSON" in (exc.detail or "") and not errors else BadArgument
    return problem(error.status, error.code, "Invalid request", exc.detail, errors=errors or [])


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status >= 500:
        return problem(status, InternalError.code, InternalError.title)
    if status == 400 and isinstance(exc.__cause__, SerializationException):
        return problem(400, MalformedJson.code, MalformedJson.title, exc.detail)
    error = _HTTP_ERRORS.get(status, TollgateError)
    response = problem(status, error.code, error.title, exc.detail)
    if exc.headers and "allow" in {name.lower() for name in exc.headers}:
        response.headers.update(exc.headers)  # a 405 names the methods (RFC 9110)
    return response


def _store_unreachable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # Redis is down or restarting: the client (and a worker posting a callback) should
    # retry, not report a bug. Every operation is safe to retry.
    log.warning("%s %s: Redis unreachable: %s", request.method, request.url.path, exc)
    response = problem(Unavailable.status, Unavailable.code, Unavailable.title,
                       "the state store is unreachable; retry shortly")
    response.headers["Retry-After"] = "1"
    return response


def _sql_unreachable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # The SQL database is down, refusing connections or out of pool slots: like Redis, a
    # 503 the client retries. Other DBAPI errors (a constraint, bad data) stay bugs.
    if (isinstance(exc, DBAPIError) and not exc.connection_invalidated
            and not isinstance(exc, OperationalError | InterfaceError)):
        return _unexpected(request, exc)
    log.warning("%s %s: SQL unreachable: %s", request.method, request.url.path,
                type(exc.__cause__ or exc).__name__)
    response = problem(Unavailable.status, Unavailable.code, Unavailable.title,
                       "the database is unreachable; retry shortly")
    response.headers["Retry-After"] = "2"
    return response


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(HTTP_500_INTERNAL_SERVER_ERROR, InternalError.code, InternalError.title)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    TollgateError: _tollgate_error,
    ValidationException: _validation,
    NotAuthorizedException: _http,
    PermissionDeniedException: _http,
    NotFoundException: _http,
    HTTPException: _http,
    **dict.fromkeys(UNREACHABLE_ERRORS, _store_unreachable),
    DBAPIError: _sql_unreachable,  # OperationalError, InterfaceError, a dropped connection
    SQLTimeoutError: _sql_unreachable,  # no pool connection in time
    Exception: _unexpected,
}
