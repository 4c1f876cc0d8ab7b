"""Hypothesis drives random sequences of core operations against the real Redis and a
plain-Python model (tests/core/core_model.py), checking the money and slot invariants after
every step, straight from what Redis holds."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from service.errors import TollgateError
from service.state.codes import ERRORS
from service.state.keys import KeySpace
from service.state.plans import PLANS, Plan
from service.state.store import Core, ItemReport
from tests.core.core_model import LIVE, STEPS, CoreModel

USERS = ("ann", "bob", "cy")
BUSY_USERS = ("ann", "ann", "bob", "cy")
PLAN_CHOICES = (PLANS["free"], PLANS["pro"], Plan("tiny", rule_slots=1, concurrency=2))
CODE_OF: dict[type[TollgateError], str] = {error: code.value for code, error in ERRORS.items()}
TERMINAL = ("done", "failed", "canceled")


class CoreMachine(RuleBasedStateMachine):
    redis_url = ""
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        # A loop of its own: hypothesis calls rules synchronously, one machine at a time.
        self.loop = asyncio.new_event_loop()
        self.prefix = f"tgsm{uuid.uuid4().hex[:10]}"
        self.client = Redis.from_url(self.redis_url, decode_responses=True)
        self.core = Core(self.client, KeySpace(self.prefix, 4))
        self.model = CoreModel()
        self.terminal: dict[str, str] = {}
        self.fresh_keys = 0

    def run(self, call: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(call)

    def outcome(self, call: Coroutine[Any, Any, Any]) -> tuple[str, Any]:
        try:
            result = self.run(call)
        except TollgateError as refusal:
            return CODE_OF[type(refusal)], refusal
        code = result[0] if isinstance(result, tuple) else getattr(result, "code", result)
        return str(code), result

    def teardown(self) -> None:
        async def clean() -> None:
            async for key in self.client.scan_iter(match=f"{self.prefix}:*", count=1000):
                await self.client.delete(key)
            await self.client.aclose()

        try:
            self.run(clean())
        finally:
            self.loop.close()

    @initialize()
    def first_users(self) -> None:
        # ann and bob exist from the start so most steps do real work; cy only when a step
        # provisions it, so every operation also meets an unknown user.
        self.ensure_user("ann", PLANS["pro"], 200)
        self.ensure_user("bob", PLANS["free"], 60)

    @rule(user=st.sampled_from(USERS), plan=st.sampled_from(PLAN_CHOICES),
          credits=st.integers(0, 200))
    def ensure_user(self, user: str, plan: Plan, credits: int) -> None:
        created = self.run(self.core.ensure_user(user, plan, credits))
        assert created == (self.model.ensure_user(user, plan, credits) == "ok")

    @rule(user=st.sampled_from(BUSY_USERS), op=st.sampled_from(["g1", "g2", "g3", "g4"]),
          amount=st.integers(-80, 120))
    def grant(self, user: str, op: str, amount: int) -> None:
        code, _ = self.outcome(self.core.grant(user, op, amount, "admin"))
        assert code == self.model.grant(user, op, amount)

    @rule(user=st.sampled_from(BUSY_USERS), op=st.sampled_from(["p1", "p2", "p3"]),
          plan=st.sampled_from(PLAN_CHOICES))
    def set_plan(self, user: str, op: str, plan: Plan) -> None:
        code, _ = self.outcome(self.core.set_plan(user, op, plan))
        assert code == self.model.set_plan(user, op, plan)

    @rule(target=jobs, user=st.sampled_from(BUSY_USERS), total=st.sampled_from([0, 1, 2, 3, 4, 4]),
          price=st.integers(0, 12), key=st.sampled_from([None, None, "k1", "k2"]),
          then=st.sampled_from(["created", "queued", "running", "running"]))
    def reserve(self, user: str, total: int, price: int, key: str | None, then: str) -> Any:
        """Reserves, then walks the new job on to `then`, so item rules meet running jobs."""
        job_id = self.core.keys.new_job_id(user)
        code, result = self.outcome(self.core.reserve(
            job_id=job_id, user_id=user, total=total, price=price, hold_ttl_ms=600_000,
            meta_json="{}", idempotency_key=key, body_hash=f"{total}x{price}",
        ))
        expected, expected_job = self.model.reserve(user, job_id, total, price, key)
        assert code == expected
        if code in ("ok", "already"):
            assert result[1] == expected_job
        if code != "ok":
            return multiple()
        if then != "created":
            self.advance(job_id, then)
        return job_id

    @rule(job_id=jobs)
    def reserve_again(self, job_id: str) -> None:
        job = self.model.jobs[job_id]
        code, result = self.outcome(self.core.reserve(
            job_id=job_id, user_id=job.owner, total=job.total, price=job.price,
            hold_ttl_ms=600_000, meta_json="{}",
        ))
        assert (code, result[1]) == ("already", job_id)

    @rule(job_id=jobs, step=st.sampled_from(sorted(STEPS.items())))
    def transition(self, job_id: str, step: tuple[str, str]) -> None:
        code, _ = self.outcome(self.core.transition(job_id, *step, lease_ms=60_000))
        assert code == self.model.transition(job_id, *step)

    @rule(job_id=jobs, target_state=st.sampled_from(["uploaded", "queued", "queued", "running"]))
    def advance(self, job_id: str, target_state: str) -> None:
        """Walks a job forward step by step, so deep states are reached in few rules."""
        order = ("created", "uploaded", "queued", "running")
        while (state := self.model.jobs[job_id].state) in order[:order.index(target_state)]:
            step = (state, STEPS[state])
            code, _ = self.outcome(self.core.transition(job_id, *step, lease_ms=60_000))
            assert code == self.model.transition(job_id, *step) == "ok"

    @rule(job_id=jobs, reports=st.lists(
        st.tuples(st.integers(0, 4), st.booleans(), st.sampled_from(["c0", "c1", "c2", "new"])),
        min_size=1, max_size=6,
    ))
    def item_results(self, job_id: str, reports: list[tuple[int, bool, str]]) -> None:
        """A burst of worker reports: repeated keys, repeated items under new keys, items
        out of range, and reports after the job ended."""
        owner = self.model.jobs[job_id].owner
        for index, ok, key in reports:
            if key == "new":
                self.fresh_keys += 1
                key = f"new-{self.fresh_keys}"
            code, _ = self.outcome(self.core.item_result(
                job_id, owner, callback_key=key, index=index, ok=ok, detail="d",
                lease_ms=60_000, flush_delay_ms=5_000,
            ))
            assert code == self.model.item_result(job_id, key, index, ok)

    @rule(job_id=jobs, entries=st.lists(
        st.tuples(st.sampled_from(["c0", "c1", "c2", "new"]), st.integers(0, 4), st.booleans()),
        min_size=1, max_size=6,
    ))
    def batched_report(self, job_id: str, entries: list[tuple[str, int, bool]]) -> None:
        """A worker's batch in one call (items_result), with the same mix as item_results."""
        owner = self.model.jobs[job_id].owner
        reports = []
        for key, index, ok in entries:
            if key == "new":
                self.fresh_keys += 1
                key = f"new-{self.fresh_keys}"
            reports.append((key, index, ok))
        code, reply = self.outcome(self.core.items_result(
            job_id, owner, [ItemReport(key, index, ok, "d") for key, index, ok in reports],
            lease_ms=60_000, flush_delay_ms=5_000))
        expected = self.model.items_result(job_id, reports)
        assert code == expected[0]
        if code in ("ok", "duplicate"):
            assert (reply.counted, reply.duplicates) == expected[1:]

    @rule(job_id=jobs, to_state=st.sampled_from(["done", "failed"]),
          from_states=st.sampled_from([("queued", "running"), ("running",), ("created",)]))
    def settle(self, job_id: str, to_state: str, from_states: tuple[str, ...]) -> None:
        owner = self.model.jobs[job_id].owner
        code, _ = self.outcome(self.core.settle(
            job_id, owner, to_state, from_states=from_states, reason="r", flush_delay_ms=5_000
        ))
        assert code == self.model.settle(job_id, to_state, from_states)

    @rule(job_id=jobs, oks=st.lists(st.booleans(), min_size=4, max_size=4))
    def work_through(self, job_id: str, oks: list[bool]) -> None:
        """A worker reports every item of the job, in order: the last one ends the job."""
        job = self.model.jobs[job_id]
        for index in range(job.total):
            code, _ = self.outcome(self.core.item_result(
                job_id, job.owner, callback_key=f"w{index}", index=index, ok=oks[index],
                detail="d", lease_ms=60_000, flush_delay_ms=5_000,
            ))
            assert code == self.model.item_result(job_id, f"w{index}", index, oks[index])

    @rule(job_id=jobs)
    def cancel(self, job_id: str) -> None:
        owner = self.model.jobs[job_id].owner
        code, _ = self.outcome(self.core.cancel(job_id, owner, reason="r", flush_delay_ms=5_000))
        assert code == self.model.cancel(job_id)

    @rule(user=st.sampled_from(BUSY_USERS), rule_id=st.sampled_from([f"r{n}" for n in range(24)]))
    def rule_slot_take(self, user: str, rule_id: str) -> None:
        code, _ = self.outcome(self.core.rule_slot_take(user, rule_id))
        assert code == self.model.rule_slot_take(user, rule_id)

    @rule(user=st.sampled_from(BUSY_USERS), rule_id=st.sampled_from([f"r{n}" for n in range(24)]))
    def rule_slot_release(self, user: str, rule_id: str) -> None:
        code = self.run(self.core.rule_slot_release(user, rule_id))
        assert code == self.model.rule_slot_release(user, rule_id)

    async def read_redis(self) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        """Everything the invariants need, read in one pipelined round trip."""
        keys, user_ids, job_ids = self.core.keys, list(USERS), list(self.model.jobs)
        async with self.client.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                user = keys.user(user_id)
                pipe.hgetall(user.base)
                pipe.smembers(user.active)
                pipe.smembers(user.rules)
            for job_id in job_ids:
                pipe.hgetall(self.core.job_keys(job_id).base)
            for bucket in range(keys.buckets):
                pipe.lrange(keys.bucket(bucket).ledger, 0, -1)
            replies = await pipe.execute()
        users = {u: replies[3 * n:3 * n + 3] for n, u in enumerate(user_ids)}
        jobs = dict(zip(job_ids, replies[3 * len(user_ids):], strict=False))
        entries = [json.loads(raw) for ledger in replies[-keys.buckets:] for raw in ledger]
        return users, jobs, entries

    @invariant()
    def redis_holds_what_the_model_says_and_the_books_balance(self) -> None:
        users, jobs, ledger = self.run(self.read_redis())
        for job_id, job in jobs.items():
            expected = self.model.jobs[job_id]
            done, failed, total = int(job["done"]), int(job["failed"]), int(job["total"])
            assert done + failed <= total
            assert (job["state"], done, failed) == (expected.state, expected.done, expected.failed)
            if job_id in self.terminal:
                assert job["state"] == self.terminal[job_id], "a terminal state changed"
            if job["state"] in TERMINAL:
                self.terminal[job_id] = job["state"]
                assert (int(job["charged"]), int(job["refunded"])) == (
                    expected.charged, expected.refunded
                )

        for user_id, (record, active, rules) in users.items():
            model = self.model.users.get(user_id)
            if model is None:
                assert (record, active, rules) == ({}, set(), set())
                continue
            money = {name: int(record[name]) for name in ("available", "reserved", "spent",
                                                          "granted")}
            assert money["granted"] == money["available"] + money["reserved"] + money["spent"]
            assert money["available"] >= 0
            open_holds = sum(int(job["cost"]) for job in jobs.values()
                             if job["owner"] == user_id and job["state"] in LIVE)
            assert money["reserved"] == open_holds
            assert money == {"available": model.available, "reserved": model.reserved,
                             "spent": model.spent, "granted": model.granted}
            assert (record["plan"], int(record["max_active"]), int(record["max_rules"])) == (
                model.plan, model.max_active, model.max_rules
            )
            assert active == model.active and rules == model.rules
            assert len(active) <= model.active_cap and len(rules) <= model.rules_cap
            assert model.active_cap == model.max_active or len(active) == model.active_cap

            mine = [entry for entry in ledger if entry["user_id"] == user_id]
            assert sum(e["amount"] for e in mine if e["kind"] == "grant") == money["granted"]
            assert -sum(e["amount"] for e in mine if e["kind"] == "charge") == money["spent"]


@pytest.mark.slow  # 3.4 s on 2 idle cores (1,500 steps)
def test_core_scripts_match_the_model_on_real_redis(redis_url: str) -> None:
    class Machine(CoreMachine):
        pass

    Machine.redis_url = redis_url
    run_state_machine_as_test(Machine, settings=settings(  # type: ignore[no-untyped-call]
        max_examples=50, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    ))
