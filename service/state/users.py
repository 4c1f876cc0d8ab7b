"""Core's calls about users and their credits: provisioning, admin grants and plans, rule
slots. A base of `service.state.store.Core`; each call is one script, idempotent."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from service.state.base import CoreBase
from service.state.codes import Code
from service.state.plans import Plan
from service.state.replies import Balance, SlotUse

# The most grants a user holds at once (lua/grant.lua refuses one more: too_many_grants).
MAX_OPEN_GRANTS = 100
GRANT_KINDS = ("paid", "promotional")
# Due grant-expiry members read a bucket and pass.
EXPIRE_BATCH = 500


def op_digest(op_id: str) -> str:
    """An admin operation id (an Idempotency-Key, up to 200 characters) in a fixed size: it
    names the op in the user's ops hash and ends the ledger id `grant:<uid>:<digest>`, which
    must fit credit_ledger.id for the longest user id."""
    return hashlib.sha256(op_id.encode()).hexdigest()[:32]


def grant_id(user_id: str, op: str) -> str:
    """A grant's id, from its user and the op that made it (an admin op's digest, or
    'signup'): the same on every retry and every rebuild, unique across users (it names the
    `expire:<grant id>` ledger rows), without ':' or ','."""
    return "gr_" + hashlib.sha256(f"{user_id}\0{op}".encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Grant:
    """A credit grant as Redis holds it (lua/includes/grants.lua)."""

    id: str
    kind: str
    amount: int
    remaining: int  # counted in available
    held: int  # drawn by live jobs
    charged: int
    expired: int
    removed: int
    expires_at_ms: int | None
    created_ms: int

    @classmethod
    def from_redis(cls, grant_id: str, raw: str | bytes) -> Grant:
        g = json.loads(raw)
        return cls(grant_id, str(g["k"]), int(g["a"]), int(g["r"]), int(g["h"]), int(g["c"]),
                   int(g["x"]), int(g["m"]), int(g["e"]) or None, int(g["t"]))

    def is_open(self, now_ms: int) -> bool:
        """Not expired, and something left in it or held from it."""
        return (self.expires_at_ms is None or self.expires_at_ms > now_ms) and (
            self.remaining > 0 or self.held > 0)

    def to_lua(self) -> dict[str, int | str]:
        return {"id": self.id, "k": self.kind, "a": self.amount, "r": self.remaining,
                "c": self.charged, "x": self.expired, "m": self.removed,
                "e": self.expires_at_ms or 0, "t": self.created_ms}


# credits.expiring comes this long before a grant's expires_at (lua/grant.lua writes it).
EXPIRING_WARN_MS = 86_400_000


class UserCalls(CoreBase):
    async def ensure_user(self, user_id: str, plan: Plan, credits: int) -> bool:
        """Provision a user once, its signup entry in the Redis ledger; True when this call
        created it."""
        return await self._provision(user_id, plan, credits,
                                     {"signup_grant": grant_id(user_id, "signup")})

    async def restore_user(
        self, user_id: str, plan: Plan, *, available: int, spent: int, granted: int,
        signup_credits: int = 0, grants: Sequence[Grant] = (), expired: int = 0,
    ) -> bool:
        """Create the user record with a balance SQL already holds (its ledger entries are
        there, so none is pushed), unless Redis has it; True when this call created it.
        `grants`: its grants as SQL rebuilt them (service.jobs.provisioning); `expired`:
        what that rebuild expired (for tollgate_credits_total)."""
        opts: dict[str, int | bool | str] = {
            "restored": True, "spent": spent, "granted": granted,
            "signup_credits": signup_credits}
        if grants:
            opts["grants"] = json.dumps([grant.to_lua() for grant in grants])
        if expired:
            opts["expired"] = expired
        created = await self._provision(user_id, plan, available, opts)
        expiries = [g.expires_at_ms for g in grants if g.expires_at_ms and g.remaining > 0]
        if created and expiries:
            await self._mark_due(self.keys.bucket_of_user(user_id), min(expiries))
        return created

    async def _provision(self, user_id: str, plan: Plan, available: int,
                         opts: dict[str, int | bool | str]) -> bool:
        user = self.keys.user(user_id)
        code, _ = await self.run_checked(
            "ensure_user",
            keys={"user": user.base, "ledger": user.bucket.ledger,
                  "counters": user.bucket.counters, "grants": user.grants,
                  "grant_expiry": user.bucket.grant_expiry,
                  "grant_warn": user.bucket.grant_warn},
            args={"user_id": user_id, "plan": plan.name, "available": available,
                  "max_active": plan.concurrency, "max_rules": plan.rule_slots,
                  "now": self._now(), "opts": opts},
        )
        await self._use_bucket(self.keys.bucket_of_user(user_id), at_once=code is Code.OK)
        return code is Code.OK

    async def rule_slot_take(self, user_id: str, rule_id: str) -> SlotUse:
        user = self.keys.user(user_id)
        code, reply = await self.run_checked(
            "rule_slot_take", keys={"user": user.base, "rules": user.rules},
            args={"rule_id": rule_id})
        return SlotUse(code, int(reply["used"]), int(reply["limit"]))

    async def rule_slot_release(self, user_id: str, rule_id: str) -> Code:
        code, _ = await self.run_checked(
            "rule_slot_release", keys={"rules": self.keys.user(user_id).rules},
            args={"rule_id": rule_id})
        return code

    async def grant(self, user_id: str, op_id: str, amount: int, reason: str, *,
                    kind: str = "paid", expires_at_ms: int | None = None,
                    max_grants: int = MAX_OPEN_GRANTS, min_price: int | None = None
                    ) -> Balance:
        """Adds a grant (a positive amount: of `kind`, expiring at `expires_at_ms` or never)
        or removes credits (a negative one: from the grants in burn-down order).
        `min_price`: the cheapest model's price (credits.exhausted; None: the stored one)."""
        user = self.keys.user(user_id)
        digest = op_digest(op_id)
        opts: dict[str, str | int] = {"grant_id": grant_id(user_id, digest), "kind": kind,
                                      "max_grants": max_grants}
        if expires_at_ms is not None:
            opts["expires_at"] = expires_at_ms
        if min_price is not None:
            opts["min_price"] = min_price
        code, reply = await self.run_checked(
            "grant",
            keys={"user": user.base, "ops": user.ops, "ledger": user.bucket.ledger,
                  "counters": user.bucket.counters, "grants": user.grants,
                  "grant_expiry": user.bucket.grant_expiry, "alert_log": user.alert_log,
                  "webhooks": user.bucket.webhooks, "grant_warn": user.bucket.grant_warn},
            args={"user_id": user_id, "op_id": digest, "amount": amount,
                  "reason": reason, "now": self._now(), "opts": opts},
        )
        bucket = self.keys.bucket_of_user(user_id)
        await self._use_bucket(bucket)
        if expires_at_ms is not None and code is Code.OK:
            # The flusher warns (credits.expiring) 24 h before, then expires it.
            await self._mark_due(bucket, max(expires_at_ms - EXPIRING_WARN_MS, self._now()))
        return Balance(code, int(reply["available"]), int(reply["reserved"]),
                       int(reply["spent"]), int(reply["granted"]))

    async def alert_set(self, user_id: str, *, low_balance: int | None, hook_url: str,
                        hook_events: tuple[str, ...], floor: int | None) -> Code:
        """The account's alert and webhook settings (lua/alert_set.lua); NotFound for a
        user Redis does not have."""
        code, _ = await self.run_checked(
            "alert_set", keys={"user": self.keys.user(user_id).base},
            args={"low_balance": "" if low_balance is None else low_balance,
                  "hook_url": hook_url, "hook_events": ",".join(hook_events),
                  "floor": "" if floor is None else floor})
        return code

    async def alert_log(self, user_id: str) -> list[str]:
        """The account's webhook delivery records (JSON), the newest 50, in no order."""
        records: dict[str, str] = await self.runner.hgetall(self.keys.user(user_id).alert_log)
        return list(records.values())

    async def set_plan(self, user_id: str, op_id: str, plan: Plan) -> Code:
        user = self.keys.user(user_id)
        code, _ = await self.run_checked(
            "set_plan", keys={"user": user.base, "ops": user.ops},
            args={"op_id": op_digest(op_id), "plan": plan.name,
                  "max_active": plan.concurrency, "max_rules": plan.rule_slots},
        )
        return code

    async def user_grants(self, user_id: str) -> list[Grant]:
        """The user's grants in Redis (open or not), in no order."""
        raw = await self.runner.execute_command("HGETALL", self.keys.user(user_id).grants)
        pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
        return [Grant.from_redis(k.decode() if isinstance(k, bytes) else str(k), v)
                for k, v in pairs]

    async def expire_grants(self, bucket: int, *, limit: int = EXPIRE_BATCH) -> int:
        """The bucket's grants past their expires_at lose what is left in them (one script
        a user, lua/grants_expire.lua); returns the credits that expired."""
        b = self.keys.bucket(bucket)
        expired = 0
        for owner in await self._due_owners(b.grant_expiry, limit):
            user = self.keys.user(owner)
            _, reply = await self.run_checked(
                "grants_expire",
                keys={"user": user.base, "grants": user.grants, "grant_expiry": b.grant_expiry,
                      "ledger": b.ledger, "counters": b.counters, "alert_log": user.alert_log,
                      "webhooks": b.webhooks},
                args={"user_id": owner, "now": self._now()})
            expired += int(reply["expired"])
        await self.warn_grants(bucket, limit=limit)
        return expired

    async def _due_owners(self, index: str, limit: int) -> list[str]:
        """The users with a member of a bucket's grant index ('<uid>:<grant id>' -> ms) due
        now, at most `limit` members read."""
        members = await self.runner.execute_command(
            "ZRANGEBYSCORE", index, "-inf", self._now(), "LIMIT", 0, limit)
        return sorted({(m.decode() if isinstance(m, bytes) else str(m)).rpartition(":")[0]
                       for m in members})

    async def warn_grants(self, bucket: int, *, limit: int = EXPIRE_BATCH) -> int:
        """credits.expiring for the bucket's grants 24 h before their expires_at (one script
        a user, lua/grants_warn.lua); returns how many were recorded."""
        b = self.keys.bucket(bucket)
        warned = 0
        for owner in await self._due_owners(b.grant_warn, limit):
            user = self.keys.user(owner)
            _, reply = await self.run_checked(
                "grants_warn",
                keys={"user": user.base, "grants": user.grants, "grant_warn": b.grant_warn,
                      "alert_log": user.alert_log, "webhooks": b.webhooks},
                args={"user_id": owner, "now": self._now()})
            warned += int(reply["warned"])
        return warned
