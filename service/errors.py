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


class PayloadTooLarge(TollgateError):
    status, code, title = 413, "payload_too_large", "Upload larger than declared"


class KeyConflict(TollgateError):
    status, code, title = 409, "key_conflict", "Key names a folder"


class InvalidTransition(TollgateError):
    status, code, title = 409, "invalid_transition", "The job is not in a state that allows this"


class InsufficientCredits(TollgateError):
    status, code, title = 402, "insufficient_credits", "Not enough credits"


class ConcurrencyLimit(TollgateError):
    status, code, title = 429, "concurrency_limit", "Too many jobs running at once"


class RuleSlotsExhausted(TollgateError):
    status, code, title = 409, "rule_slots_exhausted", "Every rule slot of the plan is taken"


class IdempotencyKeyReused(TollgateError):
    status, code = 422, "idempotency_key_reused"
    title = "Idempotency-Key was used with another body"


class BadArgument(TollgateError):
    status, code, title = 422, "validation_error", "Invalid request"
