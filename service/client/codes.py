"""Every problem code of the API, with its HTTP status and title. Generated from
service/errors.py by `python -m tests.client.regenerate`: do not edit (the client may
import nothing of the server, so it keeps this copy)."""

from __future__ import annotations

from typing import NamedTuple


class Code(NamedTuple):
    code: str
    status: int
    title: str


BAD_REQUEST = Code("bad_request", 400, "Bad request")
NOT_FOUND = Code("not_found", 404, "Not found")
BAD_SIGNATURE = Code("bad_signature", 403, "Bad or expired signature")
REQUEST_TIMEOUT = Code("request_timeout", 408, "The request body did not arrive in time")
PAYLOAD_TOO_LARGE = Code("payload_too_large", 413, "Upload larger than declared")
KEY_CONFLICT = Code("key_conflict", 409, "Key names a folder")
UPLOAD_IN_PROGRESS = Code("upload_in_progress", 409, "Another upload to this URL is in progress")
INVALID_TRANSITION = Code("invalid_transition", 409, "The job is not in a state that allows this")
INSUFFICIENT_CREDITS = Code("insufficient_credits", 402, "Not enough credits")
CONCURRENCY_LIMIT = Code("concurrency_limit", 429, "Too many jobs running at once")
RULE_SLOTS_EXHAUSTED = Code("rule_slots_exhausted", 409, "Every rule slot of the plan is taken")
KEY_SLOTS_EXHAUSTED = Code("key_slots_exhausted", 409, "Every API key slot of the plan is taken")
TOO_MANY_GRANTS = Code("too_many_grants", 409, "The user holds the most open grants allowed")
KEY_SPEND_CAP_EXCEEDED = Code(
    "key_spend_cap_exceeded", 402, "The API key's spend cap for this period would be passed")
INSUFFICIENT_SCOPE = Code("insufficient_scope", 403, "The API key's scopes do not allow this")
IDEMPOTENCY_KEY_REUSED = Code(
    "idempotency_key_reused", 422, "Idempotency-Key was used with another body")
PRIORITY_NOT_ALLOWED = Code("priority_not_allowed", 403, "The plan does not allow this priority")
VALIDATION_ERROR = Code("validation_error", 422, "Invalid request")
WEBHOOK_URL_NOT_ALLOWED = Code(
    "webhook_url_not_allowed", 422, "The webhook URL is not a public http(s) address")
UNKNOWN_MODEL = Code("unknown_model", 422, "No such model")
UPLOADS_MISSING = Code("uploads_missing", 409, "Some uploads are missing")
NOTHING_TO_RETRY = Code("nothing_to_retry", 409, "No item of the job failed")
INPUTS_EXPIRED = Code(
    "inputs_expired", 410, "The job's inputs are gone (TOLLGATE_RETRY_WINDOW after it finished)")
USER_EXISTS = Code("user_exists", 409, "The user exists already")
MALFORMED_JSON = Code("malformed_json", 400, "The body is not valid JSON")
UNAUTHORIZED = Code("unauthorized", 401, "A valid bearer token is required")
FORBIDDEN = Code("forbidden", 403, "Not allowed for this token")
METHOD_NOT_ALLOWED = Code("method_not_allowed", 405, "Method not allowed")
UNSUPPORTED_MEDIA_TYPE = Code("unsupported_media_type", 415, "Unsupported media type")
TOO_MANY_REQUESTS = Code("too_many_requests", 429, "Too many requests")
TOO_MANY_STREAMS = Code("too_many_streams", 429, "Too many open event streams")
TOO_MANY_IN_FLIGHT = Code("too_many_in_flight", 429, "Too many requests in flight from this client")
INTERNAL_ERROR = Code("internal_error", 500, "Internal error")
UNAVAILABLE = Code("unavailable", 503, "Service unavailable")
MODEL_UNAVAILABLE = Code(
    "model_unavailable", 503, "The model's processor cannot run: GET /models says why")
NOT_READY = Code("not_ready", 503, "A dependency is not answering")

CODES: dict[str, Code] = {code.code: code for code in (
    BAD_REQUEST,
    NOT_FOUND,
    BAD_SIGNATURE,
    REQUEST_TIMEOUT,
    PAYLOAD_TOO_LARGE,
    KEY_CONFLICT,
    UPLOAD_IN_PROGRESS,
    INVALID_TRANSITION,
    INSUFFICIENT_CREDITS,
    CONCURRENCY_LIMIT,
    RULE_SLOTS_EXHAUSTED,
    KEY_SLOTS_EXHAUSTED,
    TOO_MANY_GRANTS,
    KEY_SPEND_CAP_EXCEEDED,
    INSUFFICIENT_SCOPE,
    IDEMPOTENCY_KEY_REUSED,
    PRIORITY_NOT_ALLOWED,
    VALIDATION_ERROR,
    WEBHOOK_URL_NOT_ALLOWED,
    UNKNOWN_MODEL,
    UPLOADS_MISSING,
    NOTHING_TO_RETRY,
    INPUTS_EXPIRED,
    USER_EXISTS,
    MALFORMED_JSON,
    UNAUTHORIZED,
    FORBIDDEN,
    METHOD_NOT_ALLOWED,
    UNSUPPORTED_MEDIA_TYPE,
    TOO_MANY_REQUESTS,
    TOO_MANY_STREAMS,
    TOO_MANY_IN_FLIGHT,
    INTERNAL_ERROR,
    UNAVAILABLE,
    MODEL_UNAVAILABLE,
    NOT_READY,
)}
