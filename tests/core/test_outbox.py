"""The outbox (lua/includes/outbox.lua): every change bumps the job's change counter and
records the webhook events the job asked for, in the same script call as the change."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.errors import NotFound
from service.state.outbox import Outbox
from service.state.store import Core, now_ms
from tests.core.job_setup import FLUSH_MS, HOLD_MS, LEASE_MS, new_user, report

URL = "https://example.com/hook"


async def hooked_job(core: Core, user: str, events: tuple[str, ...], total: int = 3) -> str:
    job_id = core.keys.new_job_id(user)
    await core.reserve(job_id=job_id, user_id=user, total=total, price=1, hold_ttl_ms=HOLD_MS,
                       meta_json="[]", webhook_url=URL if events else "", webhook_events=events)
    return job_id


async def log_of(outbox: Outbox, job_id: str) -> dict[str, dict[str, Any]]:
    return {key: json.loads(raw) for key, raw in (await outbox.log(job_id)).items()}


async def seq(core: Core, job_id: str) -> int:
    return int(await core.client.hget(core.job_keys(job_id).base, "seq") or 0)


async def due(core: Core, job_id: str) -> dict[str, float]:
    bucket = core.job_keys(job_id).bucket
    return dict(await core.client.zrange(bucket.webhooks, 0, -1, withscores=True))


async def test_every_change_bumps_the_counter_and_records_the_asked_events(core: Core) -> None:
    outbox = Outbox(core)
    user = await new_user(core, "u-outbox")
    job_id = await hooked_job(core, user, ("started", "progress", "completed"), total=4)
    assert await seq(core, job_id) == 0
    await core.transition(job_id, "created", "uploaded")
    await core.transition(job_id, "uploaded", "queued")
    assert await seq(core, job_id) == 2
    assert await log_of(outbox, job_id) == {}  # no event names these moves

    await core.transition(job_id, "queued", "running", lease_ms=LEASE_MS)
    log = await log_of(outbox, job_id)
    started = log[f"{job_id}.started"]
    assert started["type"] == "job.started" and started["owner"] == user
    assert started["url"] == URL and started["attempts"] == 0
    assert started["snapshot"]["status"] == "running"

    await report(core, job_id, user, 0)
    await report(core, job_id, user, 1, ok=False)
    await report(core, job_id, user, 2)
    log = await log_of(outbox, job_id)
    progress = sorted((r for r in log.values() if r["type"] == "job.progress"),
                      key=lambda r: r["next_attempt_at"])
    # Three reports within a second: the first is due at once, the next a second later,
    # and it carries the third report's counts too.
    assert len(progress) == 2
    assert progress[1]["next_attempt_at"] == progress[0]["next_attempt_at"] + 1000
    assert progress[1]["snapshot"] == {**progress[1]["snapshot"], "status": "running",
                                       "done": 2, "failed": 1}

    await report(core, job_id, user, 3)
    log = await log_of(outbox, job_id)
    completed = log[f"{job_id}.completed"]
    assert completed["snapshot"]["status"] == "done" and completed["snapshot"]["done"] == 3
    assert await seq(core, job_id) == 7
    assert set(await due(core, job_id)) == set(log)


async def test_a_job_without_a_webhook_records_nothing_but_still_counts(core: Core) -> None:
    outbox = Outbox(core)
    user = await new_user(core, "u-plain")
    job_id = await hooked_job(core, user, ())
    await core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS)
    assert await seq(core, job_id) == 1
    assert await log_of(outbox, job_id) == {}
    assert await due(core, job_id) == {}


async def test_completed_is_any_terminal_status_and_only_asked_events_are_kept(
    core: Core,
) -> None:
    outbox = Outbox(core)
    user = await new_user(core, "u-cancel")
    job_id = await hooked_job(core, user, ("completed",))
    await core.transition(job_id, "created", "uploaded")
    await core.transition(job_id, "uploaded", "queued")
    await core.transition(job_id, "queued", "running", lease_ms=LEASE_MS)
    await report(core, job_id, user, 0)
    await core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS)
    log = await log_of(outbox, job_id)
    assert list(log) == [f"{job_id}.completed"]
    assert log[f"{job_id}.completed"]["snapshot"]["status"] == "canceled"


async def test_a_later_progress_waits_a_second_after_the_last(core: Core) -> None:
    outbox = Outbox(core)
    user = await new_user(core, "u-progress")
    job_id = await hooked_job(core, user, ("progress",), total=5)
    for step in (("created", "uploaded"), ("uploaded", "queued"), ("queued", "running")):
        await core.transition(job_id, *step, lease_ms=LEASE_MS)
    await report(core, job_id, user, 0)
    first = await due(core, job_id)
    assert len(first) == 1
    # The first progress delivery was sent (its due time passed): the next change is a new
    # delivery, due a second after the first.
    [first_id] = first
    await core.client.hset(core.job_keys(job_id).base, "webhook_progress_due", now_ms() - 5)
    await core.client.zadd(core.job_keys(job_id).bucket.webhooks, {first_id: 10**13})
    await report(core, job_id, user, 1)
    later = {k: v for k, v in (await due(core, job_id)).items() if k != first_id}
    assert len(later) == 1
    [(later_id, later_due)] = later.items()
    assert later_due <= now_ms() + 1000
    assert (await log_of(outbox, job_id))[later_id]["snapshot"]["done"] == 2


async def test_claim_postpones_and_result_is_counted_once(core: Core) -> None:
    outbox = Outbox(core)
    user = await new_user(core, "u-deliver")
    job_id = await hooked_job(core, user, ("completed",))
    await core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS)
    bucket = core.keys.bucket_of_job(job_id)
    assert bucket is not None
    delivery = f"{job_id}.completed"

    assert await outbox.claim(bucket, limit=10, claim_ms=60_000) == [delivery]
    assert await outbox.claim(bucket, limit=10, claim_ms=60_000) == []  # claimed: skipped

    next_at = now_ms() + 5_000
    assert (await outbox.result(delivery, "failed", attempts_seen=0, status=500,
                                next_attempt_ms=next_at, body='{"a":1}', log_ttl_ms=60_000)
            ).value == "ok"
    # A retried call of the same attempt changes nothing.
    assert (await outbox.result(delivery, "failed", attempts_seen=0, status=500,
                                next_attempt_ms=next_at, log_ttl_ms=60_000)).value == "already"
    record = (await log_of(outbox, job_id))[delivery]
    assert record["attempts"] == 1 and record["last_status"] == 500
    assert record["next_attempt_at"] == next_at and record["body"] == '{"a":1}'
    assert await due(core, job_id) == {delivery: next_at}

    await outbox.result(delivery, "delivered", attempts_seen=1, status=204, log_ttl_ms=60_000)
    record = (await log_of(outbox, job_id))[delivery]
    assert record["attempts"] == 2 and record["delivered_at"] and "next_attempt_at" not in record
    assert await due(core, job_id) == {}
    assert 0 < await core.client.pttl(core.job_keys(job_id).webhooks) <= 60_000
    assert await outbox.outcomes() == {"failed": 1, "delivered": 1}


async def test_a_delivery_that_gave_up_leaves_the_due_index(core: Core) -> None:
    outbox = Outbox(core)
    user = await new_user(core, "u-gave-up")
    job_id = await hooked_job(core, user, ("completed",))
    await core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS)
    delivery = f"{job_id}.completed"
    await outbox.result(delivery, "gave_up", attempts_seen=0, status=None, log_ttl_ms=60_000)
    record = (await log_of(outbox, job_id))[delivery]
    assert record["gave_up_at"] and "next_attempt_at" not in record
    assert "last_status" not in record  # nothing answered
    assert await due(core, job_id) == {}
    assert await outbox.outcomes() == {"gave_up": 1}
    # A delivery whose log is gone only leaves the due index.
    await core.client.zadd(core.job_keys(job_id).bucket.webhooks, {f"{job_id}.started": 1})
    with pytest.raises(NotFound):
        await outbox.result(f"{job_id}.started", "delivered", attempts_seen=0, status=200,
                            log_ttl_ms=60_000)
    assert await due(core, job_id) == {}
