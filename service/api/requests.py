"""The request class of the app: a JSON body nested too deeply is the client's error."""

from __future__ import annotations

from typing import Any

from litestar import Request

from service.errors import MalformedJson


class TollgateRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        # msgspec decodes untyped first and stops at Python's recursion limit (about 1000
        # levels) with a RecursionError; typed fields refuse shallower nesting, and free-form
        # params stop at service.jobs.schemas.MAX_JSON_DEPTH.
        try:
            return await super().json()
        except RecursionError:
            raise MalformedJson("the JSON body is nested too deeply") from None
