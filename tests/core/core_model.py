"""A plain-Python model of tollgate's credits, slots and job state machine.

Each method applies one operation to the model and returns the code the Lua script must
answer; the state machine test runs the same operation on Redis and compares."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.state.plans import Plan

STEPS = {"created": "uploaded", "uploaded": "queued", "queued": "running"}
LIVE = frozenset({"created", "uploaded", "queued", "running"})


@dataclass
class UserModel:
    plan: str
    max_active: int
    max_rules: int
    available: int
    granted: int
    reserved: int = 0
    spent: int = 0
    active: set[str] = field(default_factory=set)
    rules: set[str] = field(default_factory=set)
    ops: set[str] = field(default_factory=set)
    # A lowered plan keeps the work it already had: these bound use until it drains.
    active_cap: int = 0
    rules_cap: int = 0

    def __post_init__(self) -> None:
        self.active_cap, self.rules_cap = self.max_active, self.max_rules

    def shrink_caps(self) -> None:
        self.active_cap = max(self.max_active, min(self.active_cap, len(self.active)))
        self.rules_cap = max(self.max_rules, min(self.rules_cap, len(self.rules)))


@dataclass
class JobModel:
    owner: str
    total: int
    price: int
    state: str = "created"
    done: int = 0
    failed: int = 0
    charged: int = 0
    refunded: int = 0
    items: dict[int, bool] = field(default_factory=dict)
    callback_keys: list[str] = field(default_factory=list)

    @property
    def cost(self) -> int:
        return self.total * self.price


class CoreModel:
    def __init__(self) -> None:
        self.users: dict[str, UserModel] = {}
        self.jobs: dict[str, JobModel] = {}
        self.idempotency: dict[tuple[str, str], tuple[str, str]] = {}

    def ensure_user(self, user_id: str, plan: Plan, credits: int) -> str:
        if user_id in self.users:
            return "already"
        self.users[user_id] = UserModel(plan.name, plan.concurrency, plan.rule_slots,
                                        available=credits, granted=credits)
        return "ok"

    def reserve(self, user_id: str, job_id: str, total: int, price: int,
                idempotency_key: str | None) -> tuple[str, str | None]:
        if total < 1:
            return "bad_argument", None
        body = f"{total}x{price}"
        if idempotency_key is not None and (user_id, idempotency_key) in self.idempotency:
            first, first_body = self.idempotency[(user_id, idempotency_key)]
            return ("already" if first_body == body else "idempotency_key_reused"), first
        if job_id in self.jobs:
            return "already", job_id
        user = self.users.get(user_id)
        if user is None:
            return "not_found", None
        if user.available < total * price:
            return "insufficient_credits", None
        if len(user.active) >= user.max_active:
            return "concurrency_limit", None
        user.available -= total * price
        user.reserved += total * price
        user.active.add(job_id)
        self.jobs[job_id] = JobModel(user_id, total, price)
        if idempotency_key is not None:
            self.idempotency[(user_id, idempotency_key)] = (job_id, body)
        return "ok", job_id

    def transition(self, job_id: str, from_state: str, to_state: str) -> str:
        job = self.jobs[job_id]
        if job.state == to_state:
            return "already"
        if job.state != from_state:
            return "invalid_transition"
        job.state = to_state
        return "ok"

    def item_result(self, job_id: str, key: str, index: int, ok: bool) -> str:
        job = self.jobs[job_id]
        if key in job.callback_keys:
            return "duplicate"
        if job.state not in ("queued", "running"):
            return "invalid_transition"
        if index >= job.total:
            return "bad_argument"
        job.callback_keys.append(key)
        if index in job.items:
            return "duplicate"
        job.items[index] = ok
        if ok:
            job.done += 1
        else:
            job.failed += 1
        if job.done + job.failed < job.total:
            job.state = "running"
        else:
            self._finish(job_id, "done" if job.done else "failed")
        return "ok"

    def items_result(self, job_id: str, entries: list[tuple[str, int, bool]]
                     ) -> tuple[str, int, int]:
        """(code, counted, duplicates) of a batched report: every entry checked first, then
        each counted as item_result would."""
        job = self.jobs[job_id]
        if any(index >= job.total for _, index, _ in entries):
            return "bad_argument", 0, 0
        if all(key in job.callback_keys for key, _, _ in entries):
            return "duplicate", 0, len(entries)
        if job.state not in ("queued", "running"):
            return "invalid_transition", 0, 0
        counted = 0
        for key, index, ok in entries:
            if key in job.callback_keys:
                continue
            job.callback_keys.append(key)
            if index in job.items:
                continue
            counted += 1
            job.items[index] = ok
            if ok:
                job.done += 1
            else:
                job.failed += 1
        if counted == 0:
            return "duplicate", 0, len(entries)
        if job.done + job.failed < job.total:
            job.state = "running"
        else:
            self._finish(job_id, "done" if job.done else "failed")
        return "ok", counted, len(entries) - counted

    def settle(self, job_id: str, to_state: str, from_states: tuple[str, ...]) -> str:
        job = self.jobs[job_id]
        if job.state == to_state:
            return "already"
        # Only a job the workers have can end as done or failed, whatever the caller allows.
        if job.state not in from_states or job.state not in ("queued", "running"):
            return "invalid_transition"
        self._finish(job_id, to_state)
        return "ok"

    def cancel(self, job_id: str) -> str:
        job = self.jobs[job_id]
        if job.state == "canceled":
            return "already"
        if job.state not in LIVE:
            return "invalid_transition"
        self._finish(job_id, "canceled")
        return "ok"

    def _finish(self, job_id: str, state: str) -> None:
        job = self.jobs[job_id]
        user = self.users[job.owner]
        job.state, job.charged = state, job.done * job.price
        job.refunded = job.cost - job.charged
        user.reserved -= job.cost
        user.spent += job.charged
        user.available += job.refunded
        user.active.discard(job_id)
        user.shrink_caps()

    def rule_slot_take(self, user_id: str, rule_id: str) -> str:
        user = self.users.get(user_id)
        if user is None:
            return "not_found"
        if rule_id in user.rules:
            return "already"
        if len(user.rules) >= user.max_rules:
            return "rule_slots_exhausted"
        user.rules.add(rule_id)
        return "ok"

    def rule_slot_release(self, user_id: str, rule_id: str) -> str:
        user = self.users.get(user_id)
        if user is None or rule_id not in user.rules:
            return "already"
        user.rules.discard(rule_id)
        user.shrink_caps()
        return "ok"

    def grant(self, user_id: str, op_id: str, amount: int) -> str:
        user = self.users.get(user_id)
        if user is None:
            return "not_found"
        if f"grant:{op_id}" in user.ops:
            return "already"
        if user.available + amount < 0:
            return "insufficient_credits"
        user.ops.add(f"grant:{op_id}")
        user.available += amount
        user.granted += amount
        return "ok"

    def set_plan(self, user_id: str, op_id: str, plan: Plan) -> str:
        user = self.users.get(user_id)
        if user is None:
            return "not_found"
        if f"plan:{op_id}" in user.ops:
            return "already"
        user.ops.add(f"plan:{op_id}")
        user.plan, user.max_active, user.max_rules = plan.name, plan.concurrency, plan.rule_slots
        user.active_cap = max(user.max_active, len(user.active))
        user.rules_cap = max(user.max_rules, len(user.rules))
        return "ok"
