"""What every storage backend offers: presigned URLs, existence checks, reads, deletes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PresignedUpload:
    url: str
    method: str
    headers: dict[str, str]
    expires_at: datetime


class Storage(Protocol):
    # `internal`: a URL for a worker (the internal address); otherwise for a client.
    def presign_upload(
        self, key: str, content_type: str | None, size: int, ttl_s: int, *,
        internal: bool = False,
    ) -> PresignedUpload: ...

    def presign_download(self, key: str, ttl_s: int, *, internal: bool = False) -> str: ...

    async def missing(self, keys: list[str]) -> list[int]: ...

    async def read(self, key: str) -> bytes: ...

    async def delete(self, keys: list[str]) -> None:
        """Deletes these objects; keys that are not there are no error."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Deletes every object under a folder (`prefix` ends in "/"); returns how many."""
        ...

    async def copy(self, pairs: list[tuple[str, str]]) -> None:
        """Copies each (source, target) object inside the storage, without reading it here
        (a retry's inputs); FileNotFoundError when a source is not there."""
        ...

    def close(self) -> None: ...


def _expiry(ttl_s: int) -> tuple[int, datetime]:
    exp = int(time.time()) + ttl_s
    return exp, datetime.fromtimestamp(exp, tz=UTC)
