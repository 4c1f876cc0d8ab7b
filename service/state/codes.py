"""The return codes of the Lua scripts, mirrored once, and the typed errors they become."""

from __future__ import annotations

from enum import StrEnum

from service.errors import (
    BadArgument,
    ConcurrencyLimit,
    IdempotencyKeyReused,
    InsufficientCredits,
    InternalError,
    InvalidTransition,
    KeySlotsExhausted,
    KeySpendCapExceeded,
    NotFound,
    RuleSlotsExhausted,
    TollgateError,
    TooManyGrants,
)


class Code(StrEnum):
    OK = "ok"
    ALREADY = "already"
    DUPLICATE = "duplicate"
    NOT_FOUND = "not_found"
    INVALID_TRANSITION = "invalid_transition"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    CONCURRENCY_LIMIT = "concurrency_limit"
    RULE_SLOTS_EXHAUSTED = "rule_slots_exhausted"
    KEY_SLOTS_EXHAUSTED = "key_slots_exhausted"
    KEY_SPEND_CAP_EXCEEDED = "key_spend_cap_exceeded"
    TOO_MANY_GRANTS = "too_many_grants"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    BAD_ARGUMENT = "bad_argument"
    WRONG_TYPE = "wrong_type"
    EXHAUSTED = "exhausted"  # flush_retry_later: the record's last attempt failed


SUCCESS = frozenset({Code.OK, Code.ALREADY, Code.DUPLICATE, Code.EXHAUSTED})


ERRORS: dict[Code, type[TollgateError]] = {
    Code.NOT_FOUND: NotFound,
    Code.INVALID_TRANSITION: InvalidTransition,
    Code.INSUFFICIENT_CREDITS: InsufficientCredits,
    Code.CONCURRENCY_LIMIT: ConcurrencyLimit,
    Code.RULE_SLOTS_EXHAUSTED: RuleSlotsExhausted,
    Code.KEY_SLOTS_EXHAUSTED: KeySlotsExhausted,
    Code.KEY_SPEND_CAP_EXCEEDED: KeySpendCapExceeded,
    Code.TOO_MANY_GRANTS: TooManyGrants,
    Code.IDEMPOTENCY_KEY_REUSED: IdempotencyKeyReused,
    Code.BAD_ARGUMENT: BadArgument,
    # A key that holds another type than the script writes: stored state no request can
    # repair (user ids cannot collide any more), so a 500 the operator must look at.
    Code.WRONG_TYPE: InternalError,
}
