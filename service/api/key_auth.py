"""`Authorization: Bearer tg_...`: an API key acting for its user, within its scopes.

The secret carries its key id: one lookup (key id -> user, outside the buckets), then the
key's record in the user's bucket and one constant-time compare of sha256(secret). Each
process keeps what it verified for at most KEY_CACHE_S, so a revoked key is refused by every
process within that time; the cache refresh is also when the key's last use is noted in
Redis (never a SQL write on a request). A key Redis does not know is looked up in SQL, and
put back in Redis when it is usable (a Redis that lost it).
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass

from service.api.apikeys import hash_secret, key_id_of
from service.errors import InsufficientScope, Unauthorized
from service.jobs.apikeys import key_row, record_of, restore_key, usable
from service.jobs.provisioning import rebuild_if_lost
from service.runtime import Runtime
from service.state.apikeys import KeyRecord
from service.state.base import now_ms

KEY_CACHE_S = 0.5  # well inside the contract's 1 s for a revocation to reach every process
MAX_CACHED = 50_000
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def required_scope(method: str, path: str) -> str | None:
    """The scope a key needs for a user route; None: any key of the user may call it."""
    write = method in WRITE_METHODS
    if path == "/jobs" or path.startswith("/jobs/"):
        return "jobs:write" if write else "jobs:read"
    if path == "/rules" or path.startswith("/rules/"):
        return "rules:write" if write else "rules:read"
    if path.startswith("/me/") and write:
        return "keys:write"  # keys and the account's settings: the full-access scope
    return None


def check_scope(record: KeyRecord, method: str, path: str) -> None:
    scope = required_scope(method, path)
    if scope is not None and scope not in record.scopes:
        raise InsufficientScope(f"this key's scopes do not include {scope}")


@dataclass(frozen=True, slots=True)
class _Verified:
    until: float  # monotonic
    record: KeyRecord | None  # None: refused (unknown, revoked, wrong secret)


class KeyAuthenticator:
    """One per app: its cache is this app's, as each API process has its own."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, _Verified] = OrderedDict()

    async def authenticate(self, rt: Runtime, secret: str) -> KeyRecord:
        now = time.monotonic()
        cached = self._cache.get(secret)
        if cached is None or cached.until <= now:
            record = await self._lookup(rt, secret)
            self._cache[secret] = cached = _Verified(now + KEY_CACHE_S, record)
            self._cache.move_to_end(secret)
            if len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
            if record is not None:
                await rt.core.key_used(record.user_id, record.key_id, now_ms())
        record = cached.record
        if record is None:
            raise Unauthorized("the API key is unknown or revoked")
        if record.expires_at_ms is not None and record.expires_at_ms <= now_ms():
            raise Unauthorized("the API key expired")
        return record

    async def _lookup(self, rt: Runtime, secret: str) -> KeyRecord | None:
        key_id = key_id_of(secret)
        if key_id is None:
            return None
        owner = await rt.core.key_owner(key_id)
        record = None if owner is None else await rt.core.key_record(owner, key_id)
        if record is None:
            record = await self._from_sql(rt, key_id)
        if record is None or not hmac.compare_digest(record.secret_hash, hash_secret(secret)):
            return None
        return record

    async def _from_sql(self, rt: Runtime, key_id: str) -> KeyRecord | None:
        """A key SQL holds and Redis lost: rebuilt with its user (whose spend counters come
        back then), or on its own when only the key's record is missing."""
        row = await key_row(rt, key_id)
        if row is None or not usable(row):
            return None
        if not await rebuild_if_lost(rt, row.user_id):
            await restore_key(rt, row, None)
        else:
            await rt.core.set_key_owner(row.id, row.user_id)
        return record_of(row)
