"""Scheduling (docs/scheduling.md): executed jobs wait in tollgate's dispatch order, and the
dispatcher hands their batches to RQ a few per live worker, by priority, fair share and
each user's own order; on fakeredis, standalone Redis and a Cluster."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.jobs.dispatch import admit
from service.runtime import Runtime
from service.state.fsm import JobState
from tests.api.conftest import Api, Clock
from tests.api.flow import create_job, me, queued_job, upload_all
from tests.api.history import flush_everything
from tests.api.scheduling import (
    dispatcher,
    executed_job,
    fund,
    one_pass,
    register_worker,
    rq_batches,
    start_batch,
    uploaded_job,
)


def user() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


async def test_an_executed_job_waits_in_tollgate_until_a_worker_is_live(
        any_api: Api, rt: Runtime) -> None:
    owner, other = any_api.user(), any_api.user()
    job = await queued_job(any_api, owner, 2)
    assert job["status"] == "queued" and job["queue_position"] == 0
    behind = await queued_job(any_api, other, 2)
    assert behind["queue_position"] == 1
    d = dispatcher(rt)
    assert await one_pass(d) == 0 and rq_batches(rt) == []  # no worker: nothing enters RQ
    register_worker(rt, "w1")
    assert await one_pass(d) == 2
    assert rq_batches(rt) == [(job["id"], 0), (behind["id"], 0)]
    assert await one_pass(d) == 0  # handed once
    view = (await any_api.client.get(f"/jobs/{job['id']}", headers=any_api.auth(owner))).json()
    assert view["status"] == "queued" and view["queue_position"] == 0  # in RQ, next up


async def test_a_canceled_waiting_job_is_never_dispatched(any_api: Api, rt: Runtime) -> None:
    owner = any_api.user()
    job = await queued_job(any_api, owner, 2)
    canceled = await any_api.client.post(f"/jobs/{job['id']}/cancel",
                                         headers=any_api.auth(owner))
    assert canceled.json()["status"] == "canceled" and canceled.json()["refunded"] == 2
    register_worker(rt, "w1")
    assert await one_pass(dispatcher(rt)) == 0
    assert rq_batches(rt) == []
    assert (await me(any_api, owner))["credits"]["available"] == 10


async def test_a_job_canceled_in_the_order_behind_the_api_is_dropped_not_dispatched(
        any_api: Api, rt: Runtime) -> None:
    owner = user()
    await fund(rt, owner, 100)
    job = await executed_job(rt, owner, 8)
    await rt.core.cancel(job.id, owner, reason="user", flush_delay_ms=0)  # the order keeps it
    register_worker(rt, "w1")
    steps: list[str] = []

    async def seen(step: str) -> None:
        steps.append(step)

    assert await one_pass(dispatcher(rt, hook=seen)) == 0
    assert rq_batches(rt) == [] and steps == []  # never claimed, never enqueued
    assert await rt.core.runner.execute_command(
        "ZCARD", rt.core.keys.sched(rt.settings.queue_name).order) == 0


class Killed(Exception):
    """The dispatcher dies here (the test's hook raises it between two steps)."""


@pytest.mark.parametrize("step", ["taken", "enqueued"])
async def test_a_dispatcher_killed_between_its_steps_hands_each_batch_once(
        any_api: Api, rt: Runtime, step: str) -> None:
    owner = user()
    await fund(rt, owner, 100)
    job = await executed_job(rt, owner, 24)  # 3 batches of 8
    register_worker(rt, "w1")  # room for 2 batches

    async def die(at: str) -> None:
        if at == step:
            raise Killed(at)

    with pytest.raises(Killed):
        await one_pass(dispatcher(rt, claim_ms=700, lock_ms=100, hook=die))
    expected_then = [] if step == "taken" else [(job.id, 0), (job.id, 1)]
    assert rq_batches(rt) == expected_then
    await asyncio.sleep(0.2)  # its lock on the queue is gone, its claim is not
    second = dispatcher(rt, claim_ms=700, lock_ms=100)
    assert await one_pass(second) == 0  # the claim is live: nothing taken, nothing lost
    assert rq_batches(rt) == expected_then
    await asyncio.sleep(0.7)
    assert await one_pass(second) == 2  # the dead one's batches, once each
    assert rq_batches(rt) == [(job.id, 0), (job.id, 1)]
    assert start_batch(rt) == (job.id, 0)
    assert await one_pass(second) == 1
    assert rq_batches(rt) == [(job.id, 1), (job.id, 2)]
    assert await one_pass(second) == 0


async def test_a_stopped_dispatcher_gives_its_queue_over_at_once(any_api: Api,
                                                                  rt: Runtime) -> None:
    owner = user()
    await fund(rt, owner, 100)
    register_worker(rt, "w1")  # room for 2 batches
    first = dispatcher(rt, lock_ms=60_000)  # a lock that would outlive the test
    stop = asyncio.Event()
    running = asyncio.create_task(first.run(stop))
    job = await executed_job(rt, owner, 8)
    for _ in range(200):
        if rq_batches(rt):
            break
        await asyncio.sleep(0.01)
    assert rq_batches(rt) == [(job.id, 0)]
    stop.set()
    await running
    other = user()
    await fund(rt, other, 100)
    later = await executed_job(rt, other, 8)
    second = dispatcher(rt, lock_ms=60_000)
    assert await one_pass(second) == 1  # given back: the queue is the second's now, not in 60 s
    assert rq_batches(rt) == [(job.id, 0), (later.id, 0)]


async def test_one_users_backlog_does_not_hold_back_another(any_api: Api, rt: Runtime) -> None:
    heavy, light = user(), user()
    await fund(rt, heavy, 1000)
    await fund(rt, light, 100)
    backlog = await executed_job(rt, heavy, 1000)
    register_worker(rt, "w1")
    register_worker(rt, "w2")
    d = dispatcher(rt)
    await one_pass(d)
    started = [start_batch(rt), start_batch(rt)]  # the two workers take a batch each
    assert started == [(backlog.id, 0), (backlog.id, 1)]
    small = await executed_job(rt, light, 8)
    order = []
    for _ in range(6):
        await one_pass(d)
        order.append(start_batch(rt))
    assert (small.id, 0) in order
    heavy_after = [batch for batch in order if batch is not None and batch[0] == backlog.id]
    assert order.index((small.id, 0)) < order.index(heavy_after[2])


async def test_a_user_new_to_the_queue_goes_before_the_batches_rq_holds(
        any_api: Api, rt: Runtime) -> None:
    """k batches per worker wait in RQ for the backlog; the light user's batch, next in
    tollgate's order, goes to RQ's front: it starts on the next worker free, not behind
    the 2k batches already there. A high batch in RQ stays before it."""
    heavy, light, urgent = user(), user(), user()
    await fund(rt, heavy, 1000)
    await fund(rt, light, 100)
    await fund(rt, urgent, 100, plan="pro")
    backlog = await executed_job(rt, heavy, 1000)
    register_worker(rt, "w1")
    register_worker(rt, "w2")
    d = dispatcher(rt)
    await one_pass(d)
    assert rq_batches(rt) == [(backlog.id, n) for n in range(4)]
    small = await executed_job(rt, light, 8)
    other = user()
    await fund(rt, other, 100, plan="pro")
    await one_pass(d)  # RQ is full: the batch ahead of RQ's still goes in, at its front
    assert rq_batches(rt) == [(small.id, 0)] + [(backlog.id, n) for n in range(4)]
    later = await executed_job(rt, other, 8)
    await one_pass(d)  # ... one at a time: RQ holds one more than its room now
    assert len(rq_batches(rt)) == 5 and (later.id, 0) not in rq_batches(rt)
    assert start_batch(rt) == (small.id, 0)
    await one_pass(d)
    assert start_batch(rt) == (later.id, 0)
    await one_pass(d)  # full, and the backlog's next is not ahead of RQ's: it waits
    assert rq_batches(rt) == [(backlog.id, n) for n in range(4)]
    assert start_batch(rt) == (backlog.id, 0)
    await one_pass(d)  # ... for room, and goes to the back, as before
    assert rq_batches(rt) == [(backlog.id, n) for n in range(1, 5)]
    high = await executed_job(rt, urgent, 8, priority="high")
    assert start_batch(rt) == (backlog.id, 1)
    await one_pass(d)  # room for one: the high batch, to the front
    assert rq_batches(rt) == [(high.id, 0), (backlog.id, 2), (backlog.id, 3), (backlog.id, 4)]
    await one_pass(d)  # full: the backlog's next is not ahead of RQ's, it waits
    third = user()
    await fund(rt, third, 100, plan="pro")
    newcomer = await executed_job(rt, third, 8)
    register_worker(rt, "w3")  # room for two more: the newcomer never before the high batch
    await one_pass(d)
    assert rq_batches(rt)[0] == (high.id, 0) and (newcomer.id, 0) in rq_batches(rt)


async def test_plan_weights_share_the_workers_four_to_one(any_api: Api, rt: Runtime) -> None:
    pro, free = user(), user()
    await fund(rt, pro, 1000, plan="pro")
    await fund(rt, free, 1000)
    pro_job = await executed_job(rt, pro, 800)
    free_job = await executed_job(rt, free, 800)
    register_worker(rt, "w1")
    d = dispatcher(rt)
    counts = {pro_job.id: 0, free_job.id: 0}
    for _ in range(50):
        await one_pass(d)
        started = start_batch(rt)
        assert started is not None
        counts[started[0]] += 1
    assert 3.2 <= counts[pro_job.id] / counts[free_job.id] <= 4.8, counts


async def test_a_high_priority_job_starts_within_one_batch_per_worker(
        any_api: Api, rt: Runtime) -> None:
    bulk, urgent = user(), user()
    await fund(rt, bulk, 1000)
    await fund(rt, urgent, 100, plan="pro")
    backlog = await executed_job(rt, bulk, 800)
    for name in ("w1", "w2"):
        register_worker(rt, name)
    d = dispatcher(rt)
    await one_pass(d)
    assert len(rq_batches(rt)) == 4
    high = await executed_job(rt, urgent, 8, priority="high")
    await one_pass(d)  # the queue is full: the high batch still goes in, at its front
    assert len(rq_batches(rt)) == 5
    starts = [start_batch(rt) for _ in range(3)]
    assert starts[0] == (high.id, 0), (starts, backlog.id)


async def test_free_plan_may_not_ask_for_high_priority(any_api: Api) -> None:
    owner = any_api.user()
    body = {"items": [{"name": "a.png", "content_type": "image/png", "size": 10}],
            "priority": "high"}
    refused = await any_api.client.post("/jobs", json=body, headers=any_api.auth(owner))
    assert refused.status_code == 403 and refused.json()["code"] == "priority_not_allowed"
    body["priority"] = "low"
    assert (await any_api.client.post("/jobs", json=body, headers=any_api.auth(owner))
            ).status_code == 201
    for bad in (0, 259201, "soon"):
        body["start_deadline_s"] = bad
        answer = await any_api.client.post("/jobs", json=body, headers=any_api.auth(owner))
        assert answer.status_code == 422, answer.text


async def executed_over_http(api: Api, owner: str, **extra: Any) -> dict[str, Any]:
    job = await create_job(api, owner, 8, **extra)
    await upload_all(job)
    for step in ("confirm-upload", "execute"):
        answer = await api.client.post(f"/jobs/{job['id']}/{step}", headers=api.auth(owner))
        assert answer.status_code in (200, 202), answer.text
    return job


async def job_priority(rt: Runtime, job_id: str) -> str:
    """The priority the job was made with (its hash; the view does not show it)."""
    raw = await rt.core.runner.execute_command("HGET", rt.core.job_keys(job_id).base,
                                               "priority")
    return "normal" if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)


async def test_rules_carry_a_priority_within_the_plan(any_api: Api, rt: Runtime) -> None:
    """A rule's priority is checked against the plan (403 priority_not_allowed, as on POST
    /jobs), stored, and taken by the jobs made from it unless they name their own."""
    free, pro, bulk = any_api.user(), user(), user()
    await fund(rt, pro, 100, plan="pro")
    await fund(rt, bulk, 1000)

    async def rule(owner: str, **body: Any) -> Any:
        return await any_api.client.post("/rules", json={"name": "r", **body},
                                         headers=any_api.auth(owner))

    refused = await rule(free, priority="high")
    assert refused.status_code == 403 and refused.json()["code"] == "priority_not_allowed"
    assert (await rule(free, priority="urgent")).status_code == 422
    low = (await rule(free, priority="low")).json()
    assert low["priority"] == "low"
    url = f"/rules/{low['id']}"
    patched = await any_api.client.patch(url, json={"priority": "high"},
                                         headers=any_api.auth(free))
    assert patched.status_code == 403 and patched.json()["code"] == "priority_not_allowed"
    assert (await any_api.client.get(url, headers=any_api.auth(free))).json()["priority"] == "low"
    job = await create_job(any_api, free, 2, rule_id=low["id"])
    assert await job_priority(rt, job["id"]) == "low"
    assert (await any_api.client.post(f"/jobs/{job['id']}/cancel",
                                      headers=any_api.auth(free))).status_code == 200
    own = await create_job(any_api, free, 2, rule_id=low["id"], priority="normal")
    assert await job_priority(rt, own["id"]) == "normal"
    cleared = await any_api.client.patch(url, json={"priority": None},
                                         headers=any_api.auth(free))
    assert cleared.json()["priority"] == "normal"
    plain = (await rule(free)).json()
    assert plain["priority"] == "normal"

    urgent = await rule(pro, priority="high")
    assert urgent.status_code == 201 and urgent.json()["priority"] == "high"
    backlog = await executed_job(rt, bulk, 800)
    for name in ("w1", "w2"):
        register_worker(rt, name)
    d = dispatcher(rt)
    await one_pass(d)
    assert len(rq_batches(rt)) == 4
    high = await executed_over_http(any_api, pro, rule_id=urgent.json()["id"])
    start_batch(rt)
    await one_pass(d)
    assert start_batch(rt) == (high["id"], 0), backlog.id  # the rule's high: the next start


async def test_jobs_not_started_by_their_deadline_end_canceled_and_released(
        any_api: Api, rt: Runtime, clock: Clock) -> None:
    owners = [user() for _ in range(5)]
    jobs = []
    deadline_ms = _in_ms(2)
    for owner in owners:
        await fund(rt, owner, 100, plan="pro")
        for _ in range(10):
            job = await uploaded_job(rt, owner, 2, start_deadline_ms=deadline_ms)
            jobs.append(job)
    await asyncio.gather(*(admit(rt, job) for job in jobs))
    clock.move_past(deadline_ms)  # tollgate's clock: no wait
    d = dispatcher(rt)  # no worker: nothing starts
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 4
    ended: list[object] = []
    while loop.time() < deadline:
        await one_pass(d)
        ended = [await rt.core.job(job.id) for job in jobs]
        if all(job is not None and job.state == JobState.CANCELED for job in ended):
            break
        await asyncio.sleep(0.05)
    assert all(job is not None and job.state == JobState.CANCELED and job.reason == "deadline"
               and job.refunded == 2 for job in ended)  # type: ignore[attr-defined]
    for owner in owners:
        user_hash = await rt.core.user_record(owner)
        assert (user_hash["available"], user_hash["reserved"]) == ("100", "0")


def _in_ms(seconds: float) -> int:
    from tests.api.scheduling import deadline_in

    return deadline_in(seconds)


async def test_models_and_a_queued_job_say_whether_a_worker_serves_them(
        any_api: Api, rt: Runtime) -> None:
    any_api.runtime().live_workers.ttl_s = 0  # the registry read each time, not every 2 s
    owner = any_api.user()
    job = await queued_job(any_api, owner, 2)
    assert job["waiting_for_worker"] is True
    (model,) = (await any_api.client.get("/models", headers=any_api.auth(owner))).json()["items"]
    assert (model["workers"], model["queued_items"]) == (0, 2)
    register_worker(rt, "w1")
    await one_pass(dispatcher(rt))
    (model,) = (await any_api.client.get("/models", headers=any_api.auth(owner))).json()["items"]
    assert (model["workers"], model["queued_items"]) == (1, 0)
    view = (await any_api.client.get(f"/jobs/{job['id']}", headers=any_api.auth(owner))).json()
    assert view["waiting_for_worker"] is False
    metrics = (await any_api.client.get("/metrics")).text
    name = model["name"]
    assert f'tollgate_workers{{model="{name}"}} 1.0' in metrics
    assert (f'tollgate_dispatch_wait_seconds_count{{model="{name}",priority="normal"}} 1.0'
            in metrics), metrics[-3000:]
    assert (f'tollgate_dispatch_wait_seconds_bucket{{le="900.0",model="{name}",'
            f'priority="normal"}} 1.0' in metrics), metrics[-3000:]


def test_the_wait_histogram_sums_its_slots_and_the_older_cumulative_counts() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from service.api.sched_metrics import _Scheduling

    fields = {"normal:in:0.1": "2", "normal:in:1.0": "1", "normal:in:+Inf": "1",
              "normal:0.5": "3", "normal:1.0": "4", "normal:900.0": "4",
              "normal:count": "9", "normal:sum": "2.5"}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scheduling({"m": 1}, {"m": fields}))
    text = generate_latest(registry).decode()

    def bucket(le: str) -> str:
        return f'tollgate_dispatch_wait_seconds_bucket{{le="{le}",model="m",priority="normal"}}'

    # 0.05: nothing; 0.1: 2 new; 0.5: 2 new + 3 kept before; 1.0: 3 new + 4; +Inf: the count
    for le, count in (("0.05", 0), ("0.1", 2), ("0.5", 5), ("1.0", 7), ("900.0", 7), ("+Inf", 9)):
        assert f"{bucket(le)} {count}.0" in text, text


async def test_a_job_still_waiting_for_its_uploads_ends_by_its_start_deadline(
        any_api: Api, rt: Runtime, clock: Clock) -> None:
    owner = any_api.user()
    body = {"items": [{"name": "a.png", "content_type": "image/png", "size": 10}],
            "start_deadline_s": 1}
    created = (await any_api.client.post("/jobs", json=body, headers=any_api.auth(owner))).json()
    clock.move_past(datetime.now(UTC) + timedelta(seconds=1), by_s=0.1)  # past the deadline
    await flush_everything(any_api)  # the flusher: its hold ended at the deadline
    view = (await any_api.client.get(f"/jobs/{created['id']}",
                                     headers=any_api.auth(owner))).json()
    assert (view["status"], view["reason"], view["refunded"]) == ("canceled", "deadline", 1)
