"""Path, query and header parameters with their bounds, declared so that OpenAPI shows them.

Litestar validates the constraints of its own parameter markers (not a msgspec.Meta inside
an Annotated parameter), so the patterns of service.api.schemas are repeated here as
markers. Job and rule ids are not declared: an id of the wrong shape is a 404 like any
unknown id (no probing), checked before any lookup by service.state.keys.
"""

from __future__ import annotations

from typing import Annotated

from litestar.params import HeaderParameter, PathParameter, QueryParameter

from service.api.schemas import USER_ID_MAX, USER_ID_PATTERN
from service.contract import IDEMPOTENCY_KEY_MAX, IDEMPOTENCY_KEY_PATTERN

CURSOR_MAX = 200

UserIdPath = Annotated[str, PathParameter(min_length=1, max_length=USER_ID_MAX,
                                          pattern=USER_ID_PATTERN)]
OptionalIdempotencyKey = Annotated[str | None, HeaderParameter(
    name="Idempotency-Key", min_length=1, max_length=IDEMPOTENCY_KEY_MAX,
    pattern=IDEMPOTENCY_KEY_PATTERN)]
Cursor = Annotated[str | None, QueryParameter(min_length=1, max_length=CURSOR_MAX,
                                              pattern=r"^[A-Za-z0-9_-]+$")]
