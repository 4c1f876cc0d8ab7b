"""API keys in Redis: their records and slots in the user's bucket, their spend counters, and
the one lookup outside a bucket (key id -> user id).

A key's period is a whole number, so reserve.lua compares periods without parsing dates:
days since the epoch for a `day` cap, months since January 1970 for a `month` cap (UTC).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from service.state.base import CoreBase
from service.state.codes import Code
from service.state.plans import DEFAULT_PLAN, PLANS

DAY_MS = 86_400_000
PERIODS = ("day", "month")


def period_number(period: str, at_ms: int) -> int:
    """The UTC period that holds `at_ms`, as reserve.lua counts it."""
    if period == "day":
        return at_ms // DAY_MS
    at = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    return (at.year - 1970) * 12 + at.month - 1


def period_start(period: str, number: int) -> datetime:
    """The first instant of period `number` (the inverse of period_number)."""
    if period == "day":
        return datetime.fromtimestamp(number * DAY_MS / 1000, tz=UTC)
    return datetime(1970 + number // 12, number % 12 + 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class KeySpend:
    """What reserve.lua needs of the key a job is made through."""

    key_id: str
    cap: int | None
    period: str  # day | month (a key without a cap counts by day)

    def reserve_opts(self, at_ms: int) -> dict[str, str | int | bool]:
        opts: dict[str, str | int | bool] = {
            "key_id": self.key_id, "key_period": period_number(self.period, at_ms)}
        if self.cap is not None:
            opts["key_cap"] = self.cap
        return opts


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as Redis holds it for authentication (the rest is in SQL: api_keys)."""

    key_id: str
    user_id: str
    secret_hash: str
    scopes: frozenset[str]
    cap: int | None
    period: str | None
    expires_at_ms: int | None

    @classmethod
    def from_redis(cls, key_id: str, record: Mapping[str, str]) -> KeyRecord | None:
        if not record.get("hash") or not record.get("user_id"):
            return None
        return cls(key_id=key_id, user_id=record["user_id"], secret_hash=record["hash"],
                   scopes=frozenset(filter(None, record.get("scopes", "").split(","))),
                   cap=int(record["cap"]) if record.get("cap") else None,
                   period=record.get("period") or None,
                   expires_at_ms=int(record["expires_at"]) if record.get("expires_at")
                   else None)

    @property
    def spend(self) -> KeySpend:
        return KeySpend(self.key_id, self.cap, self.period or "day")


def slot_limits() -> list[str | int]:
    """key_create.lua's plan, key slots pairs, the default plan's first."""
    names = [DEFAULT_PLAN, *(name for name in PLANS if name != DEFAULT_PLAN)]
    pairs: list[str | int] = []
    for name in names:
        pairs += [name, PLANS[name].key_slots]
    return pairs


class ApiKeyCalls(CoreBase):
    async def key_create(self, record: KeyRecord, *, restore: bool = False,
                         spent: tuple[int, int] | None = None) -> Code:
        """Stores the key and takes a slot (KeySlotsExhausted past the plan's); `restore`:
        rebuild a key SQL holds, with `spent` = (period number, credits) SQL counted."""
        user = self.keys.user(record.user_id)
        code, _ = await self.run_checked(
            "key_create",
            keys={"user": user.base, "apikeys": user.apikeys,
                  "record": user.apikey(record.key_id), "key_spend": user.key_spend},
            args={"key_id": record.key_id, "owner": record.user_id,
                  "secret_hash": record.secret_hash, "scopes": ",".join(sorted(record.scopes)),
                  "cap": "" if record.cap is None else record.cap,
                  "period": record.period or "",
                  "expires_at": "" if record.expires_at_ms is None else record.expires_at_ms,
                  "restore": "1" if restore else "0",
                  "spent_period": "" if spent is None else spent[0],
                  "spent": "" if spent is None else spent[1],
                  "plan_limits": slot_limits()})
        return code

    async def key_revoke(self, user_id: str, key_id: str) -> Code:
        user = self.keys.user(user_id)
        code, _ = await self.run_checked(
            "key_revoke", keys={"apikeys": user.apikeys, "record": user.apikey(key_id),
                                "key_spend": user.key_spend},
            args={"key_id": key_id})
        return code

    async def key_owner(self, key_id: str) -> str | None:
        owner: str | None = await self.runner.execute_command(
            "GET", self.keys.apikey_owner(key_id))
        return owner

    async def set_key_owner(self, key_id: str, user_id: str | None) -> None:
        name = self.keys.apikey_owner(key_id)
        if user_id is None:
            await self.client.execute_command("DEL", name)
        else:
            await self.client.execute_command("SET", name, user_id)

    async def key_record(self, user_id: str, key_id: str) -> KeyRecord | None:
        raw = await self.runner.execute_command("HGETALL", self.keys.user(user_id).apikey(key_id))
        return KeyRecord.from_redis(key_id, _str_map(raw))

    async def key_spends(self, user_id: str) -> dict[str, str]:
        """The user's key spend hash: `<key id>:p` period, `:s` spent, `:u` last used ms."""
        raw = await self.runner.execute_command("HGETALL", self.keys.user(user_id).key_spend)
        return _str_map(raw)

    async def key_used(self, user_id: str, key_id: str, at_ms: int) -> None:
        """Notes the key's last use (GET /me/keys shows it; SQL gets it when listed)."""
        await self.runner.execute_command("HSET", self.keys.user(user_id).key_spend,
                                          f"{key_id}:u", at_ms)


def _str_map(raw: object) -> dict[str, str]:
    """HGETALL's reply as str -> str, whatever the client's decoding and protocol."""
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, list | tuple):
        items = list(zip(raw[::2], raw[1::2], strict=True))
    else:
        return {}
    return {_text(k): _text(v) for k, v in items}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
