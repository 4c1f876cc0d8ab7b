"""A refusal of the API as an exception: its RFC 9457 problem document, typed by its `code`."""

from __future__ import annotations

from typing import Any

import httpx

from service.client import codes


class ProblemError(Exception):
    """The API refused the request; `code` is stable (codes.py lists them all)."""

    # The job create() or run() made and canceled because of this refusal, else None.
    job_id: str | None = None

    def __init__(self, status: int, code: str, title: str, detail: str | None,
                 body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {detail or title}")
        self.status, self.code, self.title, self.detail, self.body = (
            status, code, title, detail, body)


class Unauthorized(ProblemError):
    pass


class NotFound(ProblemError):
    pass


class InsufficientCredits(ProblemError):
    pass


class ConcurrencyLimit(ProblemError):
    pass


class InvalidTransition(ProblemError):
    pass


class UploadsMissing(ProblemError):
    @property
    def missing(self) -> list[int]:
        return [int(index) for index in self.body.get("missing", [])]


class ValidationFailed(ProblemError):
    """validation_error, malformed_json, idempotency_key_reused, unknown_model..."""


class Unavailable(ProblemError):
    """503: retry later (the answer's Retry-After says when)."""


# The codes come from codes.py, service/errors.py's table: a code renamed there is a name
# missing here. Any other code is a ValidationFailed on 400 and 422, else a ProblemError.
_BY_CODE: dict[str, type[ProblemError]] = {
    codes.UNAUTHORIZED.code: Unauthorized,
    codes.NOT_FOUND.code: NotFound,
    codes.INSUFFICIENT_CREDITS.code: InsufficientCredits,
    codes.CONCURRENCY_LIMIT.code: ConcurrencyLimit,
    codes.INVALID_TRANSITION.code: InvalidTransition,
    codes.UPLOADS_MISSING.code: UploadsMissing,
    codes.UNAVAILABLE.code: Unavailable,
}


def problem_from(response: httpx.Response) -> ProblemError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "code" not in body:
        body = {"code": "http_error", "title": response.reason_phrase,
                "detail": response.text[:500]}
    code = str(body["code"])
    cls = _BY_CODE.get(code) or (ValidationFailed if response.status_code in (400, 422)
                                 else ProblemError)
    return cls(response.status_code, code, str(body.get("title", "")), body.get("detail"), body)


def name_job(error: Exception, job_id: str) -> None:
    """`error.job_id`: the job the client canceled because of `error` (any exception an
    upload raises, a ProblemError or httpx's own), so that the caller can look it up."""
    error.job_id = job_id  # type: ignore[attr-defined]


def raise_for_problem(response: httpx.Response) -> None:
    if response.is_error:
        raise problem_from(response)
