"""API keys (POST/GET /me/keys, DELETE /me/keys/{id}, and the admin's list and revoke).

A key's secret is `tg_<key id>_<32 random bytes, base64url>`; only its sha256 is stored, in
SQL (api_keys) and in Redis. Creating takes a key slot in Redis first (key_create.lua, the
plan's limit checked atomically), then writes the row; a refused row gives the slot back.
Revoking marks the row first, then removes the Redis record and the lookup by key id: every
process refuses the key once its cached copy (service.api.key_auth, at most KEY_CACHE_S)
is gone.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from service.api.schemas import KeyCreate
from service.errors import BadArgument, NotFound
from service.history.models import ApiKey
from service.jobs.apikeys import record_of
from service.jobs.provisioning import as_known_user, rebuild_if_lost
from service.runtime import Runtime
from service.state.apikeys import period_number
from service.state.base import now_ms
from service.state.keys import is_sortable_id, new_sortable_id
from service.state.records import iso_z, ms_to_datetime

SCOPES = ("jobs:read", "jobs:write", "rules:read", "rules:write", "keys:write")
DEFAULT_SCOPES = tuple(scope for scope in SCOPES if scope != "keys:write")
SECRET_PREFIX = "tg_"
KEY_ID_LENGTH = 26


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_prefix(key_id: str) -> str:
    return f"{SECRET_PREFIX}{key_id}_"


def key_id_of(secret: str) -> str | None:
    """The key id a secret carries, or None for a string that is not a key's secret."""
    head = len(SECRET_PREFIX) + KEY_ID_LENGTH
    if (len(secret) < head + 22 or len(secret) > 200 or not secret.startswith(SECRET_PREFIX)
            or secret[head] != "_"):
        return None
    key_id = secret[len(SECRET_PREFIX):head]
    return key_id if is_sortable_id(key_id) else None


def key_view(row: ApiKey) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "prefix": row.prefix,
            "scopes": [scope for scope in SCOPES if scope in row.scopes.split(",")],
            "spend_cap": None if row.cap_credits is None else {
                "credits": row.cap_credits, "period": row.cap_period},
            "expires_at": iso_z(row.expires_at), "created_at": iso_z(row.created_at)}


async def create_key(rt: Runtime, user_id: str, data: KeyCreate) -> dict[str, Any]:
    expires_at = data.expires_at
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise BadArgument("expires_at needs a time zone (e.g. 2027-01-01T00:00:00Z)",
                              field="expires_at")
        if expires_at <= datetime.now(UTC):
            raise BadArgument("expires_at is in the past", field="expires_at")
    key_id = new_sortable_id()
    secret = f"{key_prefix(key_id)}{secrets.token_urlsafe(32)}"
    scopes = sorted(set(data.scopes) if data.scopes is not None else set(DEFAULT_SCOPES))
    cap = data.spend_cap
    row = ApiKey(id=key_id, user_id=user_id, name=data.name, prefix=key_prefix(key_id),
                 secret_hash=hash_secret(secret), scopes=",".join(scopes),
                 cap_credits=None if cap is None else cap.credits,
                 cap_period=None if cap is None else cap.period,
                 expires_at=None if expires_at is None else expires_at.astimezone(UTC),
                 created_at=datetime.now(UTC).replace(microsecond=0))
    record = record_of(row)
    await as_known_user(rt, user_id, lambda: rt.core.key_create(record))
    try:
        async with rt.sessions() as session, session.begin():
            session.add(row)
    except BaseException:
        await rt.core.key_revoke(user_id, key_id)  # the slot back: the key never existed
        raise
    await rt.core.set_key_owner(key_id, user_id)
    return {**key_view(row), "secret": secret}


async def list_keys(rt: Runtime, user_id: str) -> list[dict[str, Any]]:
    """The user's keys that are not revoked, with their period spend and last use (from
    Redis; the last use is copied to SQL here, never on the request that used the key)."""
    await rebuild_if_lost(rt, user_id)  # the spend counters come back with the user
    spends = await rt.core.key_spends(user_id)
    at = now_ms()
    async with rt.sessions() as session, session.begin():
        rows = (await session.scalars(select(ApiKey).where(
            ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.created_at.desc(), ApiKey.id.desc()))).all()
        items = []
        for row in rows:
            view = key_view(row)
            period = period_number(row.cap_period or "day", at)
            stored = spends.get(f"{row.id}:p")
            view["spent_this_period"] = int(spends.get(f"{row.id}:s") or 0) \
                if stored is not None and int(stored) == period else 0
            used = ms_to_datetime(spends.get(f"{row.id}:u"))
            if used is not None and (row.last_used_at is None or used > row.last_used_at):
                row.last_used_at = used
            view["last_used_at"] = iso_z(row.last_used_at)
            items.append(view)
    return items


async def revoke_key(rt: Runtime, user_id: str, key_id: str) -> None:
    """204 for the user's key, revoked now or before (a retried DELETE); 404 otherwise."""
    async with rt.sessions() as session, session.begin():
        row = await session.get(ApiKey, key_id) if len(key_id) <= 64 else None
        if row is None or row.user_id != user_id:
            raise NotFound(f"no key {key_id!r}")
        if row.revoked_at is None:
            await session.execute(update(ApiKey).where(ApiKey.id == key_id)
                                  .values(revoked_at=datetime.now(UTC)))
    await rt.core.set_key_owner(key_id, None)
    await rt.core.key_revoke(user_id, key_id)
