"""Turning what a caller hands to create() into the job's items and the bytes to upload."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

# A path, or (name, bytes), or (name, bytes, content type).
FileSpec: TypeAlias = str | os.PathLike[str] | tuple[str, bytes] | tuple[str, bytes, str]


def read_files(files: Sequence[FileSpec]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The `items` of POST /jobs (size = the exact byte count: the upload's limit) and the
    content of each."""
    items, contents = [], []
    for spec in files:
        if isinstance(spec, tuple):
            name, data = spec[0], spec[1]
            content_type = spec[2] if len(spec) == 3 else _guess(name)
        else:
            path = Path(spec)
            name, data, content_type = path.name, path.read_bytes(), _guess(path.name)
        items.append({"name": name, "content_type": content_type, "size": len(data)})
        contents.append(data)
    return items, contents


def _guess(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def backoff(initial: float, factor: float, ceiling: float) -> Iterator[float]:
    delay = initial
    while True:
        yield delay
        delay = min(ceiling, delay * factor)
