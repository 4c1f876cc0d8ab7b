"""The return codes of the Lua scripts, mirrored once, and the typed errors they become."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Code(StrEnum):
    OK = "ok"
    ALREADY = "already"
    DUPLICATE = "duplicate"
    NOT_FOUND = "not_found"
    INVALID_TRANSITION = "invalid_transition"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    CONCURRENCY_LIMIT = "concurrency_limit"
    RULE_SLOTS_EXHAUSTED = "rule_slots_exhausted"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    BAD_ARGUMENT = "bad_argument"


SUCCESS = frozenset({Code.OK, Code.ALREADY, Code.DUPLICATE})


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


ERRORS: dict[Code, type[TollgateError]] = {
    Code.NOT_FOUND: NotFound,
    Code.INVALID_TRANSITION: InvalidTransition,
    Code.INSUFFICIENT_CREDITS: InsufficientCredits,
    Code.CONCURRENCY_LIMIT: ConcurrencyLimit,
    Code.RULE_SLOTS_EXHAUSTED: RuleSlotsExhausted,
    Code.IDEMPOTENCY_KEY_REUSED: IdempotencyKeyReused,
    Code.BAD_ARGUMENT: BadArgument,
}
