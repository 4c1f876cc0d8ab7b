"""The API's response class: a JSON answer ends with a newline, so `curl` output in a
terminal does not run into the prompt or the next answer."""

from __future__ import annotations

from typing import Any

from litestar import Response
from litestar.serialization import default_serializer
from litestar.types import Serializer


class JsonResponse(Response[Any]):
    """Litestar's Response, with `\\n` after a body it encoded as JSON (bytes handed to it,
    files and other media types are sent as they are)."""

    def render(self, content: Any, media_type: str,
               enc_hook: Serializer = default_serializer) -> bytes:
        body = super().render(content, media_type, enc_hook)
        # None (a 204, a HEAD) renders as `null`, which Litestar then drops: left alone.
        if content is not None and not isinstance(content, bytes) and \
                media_type.startswith("application/") and media_type.endswith("json"):
            return body + b"\n"
        return body
