"""The body of POST /jobs (and what a rule presets for it), as msgspec Structs Litestar
validates: the input of service.jobs.create.

Stored text holds no control characters (PostgreSQL text cannot hold NUL). Each pattern ends
in `$(?!\n)`: Python's `$` (msgspec's) also matches before a final newline; ECMA's does not.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from service.errors import BadArgument

NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$(?!\n)"
_NO_CONTROL = re.compile(NO_CONTROL_PATTERN)
MAX_JSON_DEPTH = 32
# Params of a job or rule (docs/models.md, "Params and rule presets"): the params object is
# level 1 of at most PARAMS_MAX_DEPTH levels of objects and arrays, PARAMS_MAX_BYTES of JSON.
PARAMS_MAX_DEPTH = 8
PARAMS_MAX_BYTES = 16 * 1024

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_CONTROL_PATTERN)]
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
ContentType = Annotated[str, msgspec.Meta(max_length=127, pattern=rf"^{_TOKEN}/{_TOKEN}$(?!\n)")]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$(?!\n)")]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


def check_stored_json(value: Any, depth: int = 0, where: str = "params",
                      max_depth: int = MAX_JSON_DEPTH) -> None:
    """Free-form JSON a client stores: objects and arrays at most `max_depth` levels deep
    (`value` itself is level 1), no control characters in any key or string. The ValueError
    names the field by its JSON path (`params.a[0]`, in `field`); msgspec makes it a
    validation error."""
    if isinstance(value, str):
        if not _NO_CONTROL.match(value):
            raise StoredJsonError(where, f"{where} holds a control character")
    elif isinstance(value, dict | list) and depth >= max_depth:
        raise StoredJsonError(where, f"{where} nests deeper than {max_depth} levels")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_stored_json(key, depth + 1, where, max_depth)  # names the object holding it
            check_stored_json(item, depth + 1, f"{where}.{key}", max_depth)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_stored_json(item, depth + 1, f"{where}[{index}]", max_depth)


class StoredJsonError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_params(params: dict[str, Any]) -> None:
    """The bounds of job and rule params; their model's params_schema is checked later.

    A BadArgument, not a ValueError: msgspec lets it through, so the 422 names the field
    (`field`, `errors[].key`) as the schema check's refusals do."""
    try:
        check_stored_json(params, max_depth=PARAMS_MAX_DEPTH)
        size = len(msgspec.json.encode(params))
        if size > PARAMS_MAX_BYTES:
            raise StoredJsonError("params", f"params is {size} bytes of JSON; at most "
                                            f"{PARAMS_MAX_BYTES}")
    except StoredJsonError as exc:
        raise BadArgument(str(exc), field=exc.field, errors=[
            {"message": str(exc), "key": exc.field, "source": "body"}]) from None


class ItemIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    content_type: ContentType
    size: Annotated[int, msgspec.Meta(ge=1)]


Priority = Literal["high", "normal", "low"]
WebhookEvent = Literal["started", "progress", "completed"]


class WebhookIn(msgspec.Struct, forbid_unknown_fields=True):
    """Where a job's events go (docs/webhooks.md); the address is checked by the API."""
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048,
                                     pattern=r"^https?://[^\x00-\x20\x7f]+$(?!\n)")]
    events: Annotated[list[WebhookEvent], msgspec.Meta(min_length=1, max_length=3)] = \
        msgspec.field(default_factory=lambda: ["completed"])


class JobCreate(msgspec.Struct, forbid_unknown_fields=True):
    """With `rule_id`, the rule's model, params and webhook; a field given here overrides
    the rule's (params as a whole object)."""

    items: Annotated[list[ItemIn], msgspec.Meta(min_length=1)]
    webhook: WebhookIn | None = None
    rule_id: Id | None = None
    model: ModelName | None = None
    params: dict[str, Any] | None = None
    # Seconds the outputs are kept after the job finished; unset: TOLLGATE_RESULT_TTL.
    result_ttl_s: Annotated[int, msgspec.Meta(ge=3600, le=2592000)] | None = None
    # Scheduling (docs/scheduling.md): its priority (unset: the rule's, else normal) and
    # the seconds after its creation by which it must have started, else it is canceled.
    priority: Priority | None = None
    start_deadline_s: Annotated[int, msgspec.Meta(ge=1, le=259200)] | None = None

    def __post_init__(self) -> None:
        if self.params is not None:
            check_params(self.params)
