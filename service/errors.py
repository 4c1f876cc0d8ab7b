"""Every refusal tollgate answers with: a stable machine-readable code and its HTTP status.

One table for the whole service; the API turns each into an RFC 9457 problem document.
"""

from __future__ import annotations

from typing import Any


class TollgateError(Exception):
    """A refusal with a stable machine-readable code and the HTTP status it maps to."""

    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra


class NotFound(TollgateError):
    status, code, title = 404, "not_found", "Not found"


class BadSignature(TollgateError):
    status, code, title = 403, "bad_signature", "Bad or expired signature"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or "this URL is not signed for this request, or it expired",
                         **extra)


class RequestTimeout(TollgateError):
    status, code, title = 408, "request_timeout", "The request body did not arrive in time"


class PayloadTooLarge(TollgateError):
    status, code, title = 413, "payload_too_large", "Upload larger than declared"


class KeyConflict(TollgateError):
    status, code, title = 409, "key_conflict", "Key names a folder"


class UploadInProgress(TollgateError):
    status, code, title = 409, "upload_in_progress", "Another upload to this URL is in progress"


class InvalidTransition(TollgateError):
    status, code, title = 409, "invalid_transition", "The job is not in a state that allows this"


class InsufficientCredits(TollgateError):
    status, code, title = 402, "insufficient_credits", "Not enough credits"


class ConcurrencyLimit(TollgateError):
    status, code, title = 429, "concurrency_limit", "Too many jobs running at once"


class RuleSlotsExhausted(TollgateError):
    status, code, title = 409, "rule_slots_exhausted", "Every rule slot of the plan is taken"


class KeySlotsExhausted(TollgateError):
    status, code, title = 409, "key_slots_exhausted", "Every API key slot of the plan is taken"


class TooManyGrants(TollgateError):
    status, code, title = 409, "too_many_grants", "The user holds the most open grants allowed"


class KeySpendCapExceeded(TollgateError):
    status, code = 402, "key_spend_cap_exceeded"
    title = "The API key's spend cap for this period would be passed"


class InsufficientScope(TollgateError):
    status, code, title = 403, "insufficient_scope", "The API key's scopes do not allow this"


class IdempotencyKeyReused(TollgateError):
    status, code = 422, "idempotency_key_reused"
    title = "Idempotency-Key was used with another body"


class PriorityNotAllowed(TollgateError):
    status, code, title = 403, "priority_not_allowed", "The plan does not allow this priority"


class BadArgument(TollgateError):
    status, code, title = 422, "validation_error", "Invalid request"


class WebhookUrlNotAllowed(TollgateError):
    status, code = 422, "webhook_url_not_allowed"
    title = "The webhook URL is not a public http(s) address"


class UnknownModel(TollgateError):
    status, code, title = 422, "unknown_model", "No such model"


class UploadsMissing(TollgateError):
    status, code, title = 409, "uploads_missing", "Some uploads are missing"


class NothingToRetry(TollgateError):
    status, code, title = 409, "nothing_to_retry", "No item of the job failed"


class InputsExpired(TollgateError):
    status, code = 410, "inputs_expired"
    title = "The job's inputs are gone (TOLLGATE_RETRY_WINDOW after it finished)"


class UserExists(TollgateError):
    status, code, title = 409, "user_exists", "The user exists already"


# Refusals that Litestar or the process raises rather than a service; the API maps them
# here (service.api.problems), so every code a client can see is in this one module.
class MalformedJson(TollgateError):
    status, code, title = 400, "malformed_json", "The body is not valid JSON"


class Unauthorized(TollgateError):
    status, code, title = 401, "unauthorized", "A valid bearer token is required"


class Forbidden(TollgateError):
    status, code, title = 403, "forbidden", "Not allowed for this token"


class MethodNotAllowed(TollgateError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class UnsupportedMediaType(TollgateError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class TooManyRequests(TollgateError):
    status, code, title = 429, "too_many_requests", "Too many requests"


class TooManyStreams(TollgateError):
    status, code, title = 429, "too_many_streams", "Too many open event streams"


class TooManyInFlight(TollgateError):
    status, code, title = 429, "too_many_in_flight", "Too many requests in flight from this client"


class InternalError(TollgateError):
    status, code, title = 500, "internal_error", "Internal error"


class Unavailable(TollgateError):
    status, code, title = 503, "unavailable", "Service unavailable"


class ModelUnavailable(TollgateError):
    status, code = 503, "model_unavailable"
    title = "The model's processor cannot run: GET /models says why"


class NotReady(TollgateError):
    status, code, title = 503, "not_ready", "A dependency is not answering"


def error_table() -> list[type[TollgateError]]:
    """Every refusal class of this module: the one table the API and its docs read."""
    found: list[type[TollgateError]] = []
    pending: list[type[TollgateError]] = [TollgateError]
    while pending:
        cls = pending.pop(0)
        if cls.__module__ == __name__:
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
