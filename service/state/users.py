"""Core's calls about users and their credits: provisioning, admin grants and plans, rule
slots. A base of `service.state.store.Core`; each call is one script, idempotent."""

from __future__ import annotations

import hashlib

from service.state.base import CoreBase
from service.state.codes import Code
from service.state.plans import Plan
from service.state.replies import Balance, SlotUse


def op_digest(op_id: str) -> str:
    """An admin operation id (an Idempotency-Key, up to 200 characters) in a fixed size: it
    names the op in the user's ops hash and ends the ledger id `grant:<uid>:<digest>`, which
    must fit credit_ledger.id for the longest user id."""
    return hashlib.sha256(op_id.encode()).hexdigest()[:32]


class UserCalls(CoreBase):
    async def ensure_user(self, user_id: str, plan: Plan, credits: int) -> bool:
        """Provision a user once, its signup entry in the Redis ledger; True when this call
        created it."""
        return await self._provision(user_id, plan, credits, {})

    async def restore_user(
        self, user_id: str, plan: Plan, *, available: int, spent: int, granted: int,
        signup_credits: int = 0,
    ) -> bool:
        """Create the user record with a balance SQL already holds (its ledger entries are
        there, so none is pushed), unless Redis has it; True when this call created it."""
        return await self._provision(user_id, plan, available, {
            "restored": True, "spent": spent, "granted": granted,
            "signup_credits": signup_credits})

    async def _provision(self, user_id: str, plan: Plan, available: int,
                         opts: dict[str, int | bool]) -> bool:
        user = self.keys.user(user_id)
        code, _ = await self.run_checked(
            "ensure_user",
            keys={"user": user.base, "ledger": user.bucket.ledger,
                  "counters": user.bucket.counters},
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

    async def grant(self, user_id: str, op_id: str, amount: int, reason: str,
                    min_price: int | None = None) -> Balance:
        """`min_price`: the cheapest model's price (credits.exhausted; None: the stored one)."""
        user = self.keys.user(user_id)
        code, reply = await self.run_checked(
            "grant",
            keys={"user": user.base, "ops": user.ops, "ledger": user.bucket.ledger,
                  "counters": user.bucket.counters, "alert_log": user.alert_log,
                  "webhooks": user.bucket.webhooks},
            args={"user_id": user_id, "op_id": op_digest(op_id), "amount": amount,
                  "reason": reason, "now": self._now(),
                  "min_price": "" if min_price is None else min_price},
        )
        await self._use_bucket(self.keys.bucket_of_user(user_id))
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
