"""Paying for work done (issue 23): items a processor failed as billable (the input's fault,
found after the work) are charged when the job's model bills input errors (reserve stores
`bill_input_errors` on the job), whichever script ends the job: the last report, a settle
(lease lost) or a cancel. Plain failures stay free; granted = available + reserved + spent
holds throughout. On fakeredis, the real Redis and a Redis Cluster (the `core` fixture)."""

from __future__ import annotations

import pytest

from service.errors import BadArgument
from service.state.replies import ItemReport
from service.state.store import Core
from tests.core.job_setup import FLUSH_MS, HOLD_MS, LEASE_MS, STEPS, new_user
from tests.core.redis_state import assert_balanced, balance, ledger, money


async def billing_job(core: Core, user_id: str, *, bills: bool, total: int = 4,
                      price: int = 10) -> str:
    """A running job whose model bills input errors, or not."""
    job_id = core.keys.new_job_id(user_id)
    await core.reserve(job_id=job_id, user_id=user_id, total=total, price=price,
                       hold_ttl_ms=HOLD_MS, meta_json='{"items": []}', bill_input_errors=bills)
    for from_state, to_state in STEPS:
        await core.transition(job_id, from_state, to_state, lease_ms=LEASE_MS)
    return job_id


def failed(index: int, *, billable: bool, key: str | None = None) -> ItemReport:
    return ItemReport(key or f"cb-{index}", index, False, "truncated image", billable)


def done(index: int) -> ItemReport:
    return ItemReport(f"cb-{index}", index, True, f"out/{index}")


async def report_batch(core: Core, job_id: str, owner: str, entries: list[ItemReport]) -> None:
    await core.items_result(job_id, owner, entries, lease_ms=LEASE_MS, flush_delay_ms=FLUSH_MS)


async def report_one(core: Core, job_id: str, owner: str, index: int, *, billable: bool,
                     key: str | None = None) -> None:
    await core.item_result(job_id, owner, callback_key=key or f"cb-{index}", index=index,
                           ok=False, detail="truncated image", lease_ms=LEASE_MS,
                           flush_delay_ms=FLUSH_MS, billable=billable)


async def test_billable_failures_are_charged_when_the_model_bills_input_errors(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await billing_job(core, user, bills=True)
    # One batched report (one ok, one billable, one free failure), then the last item alone.
    await report_batch(core, job_id, user, [done(0), failed(1, billable=True),
                                            failed(2, billable=False)])
    await assert_balanced(core, user, [job_id])
    await report_one(core, job_id, user, 3, billable=True)
    job = await core.job_record(job_id)
    assert (job["state"], job["done"], job["failed"], job["billed"]) == ("done", "1", "3", "2")
    # charged = (done + billable failed) * price; the free failure is refunded.
    assert (job["charged"], job["refunded"]) == ("30", "10")
    assert await balance(core, user) == money(70, 0, 30, 100)
    await assert_balanced(core, user, [job_id])
    entries = [e for e in await ledger(core, user) if e.get("job_id") == job_id]
    assert [(e["kind"], e["amount"]) for e in entries] == [
        ("hold", -40), ("release", 40), ("charge", -30)]


async def test_billable_failures_stay_free_when_the_model_does_not_bill_them(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await billing_job(core, user, bills=False)
    await report_batch(core, job_id, user, [done(0), failed(1, billable=True),
                                            failed(2, billable=True)])
    await report_one(core, job_id, user, 3, billable=True)
    job = await core.job_record(job_id)
    assert (job["state"], job["failed"], job.get("billed")) == ("done", "3", None)
    assert (job["charged"], job["refunded"]) == ("10", "30")
    assert await balance(core, user) == money(90, 0, 10, 100)


async def test_a_job_whose_items_all_failed_billably_is_failed_and_charged(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await billing_job(core, user, bills=True, total=2)
    await report_batch(core, job_id, user, [failed(0, billable=True), failed(1, billable=True)])
    job = await core.job_record(job_id)
    assert (job["state"], job["charged"], job["refunded"]) == ("failed", "20", "0")
    await assert_balanced(core, user, [job_id])


async def test_a_repeated_billable_report_is_charged_once(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await billing_job(core, user, bills=True)
    await report_batch(core, job_id, user, [failed(1, billable=True)])
    await report_batch(core, job_id, user, [failed(1, billable=True)])  # same key
    await report_one(core, job_id, user, 1, billable=True, key="another-key")  # same item
    await report_batch(core, job_id, user, [failed(1, billable=True, key="k3"), done(0)])
    job = await core.job_record(job_id)
    assert (job["done"], job["failed"], job["billed"]) == ("1", "1", "1")


@pytest.mark.parametrize("end", ["settle", "cancel"])
async def test_a_job_ended_early_charges_its_billable_failures_too(
    core: Core, frozen_clock: list[int], end: str
) -> None:
    """A lost lease (settle) or a cancel after some billable failures: those items were
    worked on and are charged; the items never reported are refunded."""
    user = await new_user(core, "ann", credits=100)
    job_id = await billing_job(core, user, bills=True)
    await report_batch(core, job_id, user, [done(0), failed(1, billable=True)])
    if end == "settle":
        progress = await core.settle(job_id, user, "failed", reason="lease expired",
                                     flush_delay_ms=FLUSH_MS)
    else:
        progress = await core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS)
    assert (progress.charged, progress.refunded) == (20, 20)
    assert await balance(core, user) == money(80, 0, 20, 100)
    await assert_balanced(core, user, [job_id])


async def test_a_malformed_outcome_flag_is_refused_before_any_write(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann", credits=100)
    job_id = await billing_job(core, user, bills=True)
    before = await core.job_record(job_id)
    keys, bucket = core.job_keys(job_id), core.job_keys(job_id).bucket
    with pytest.raises(BadArgument):
        await core.run_checked(
            "items_result",
            keys={"job": keys.base, "items": keys.items, "callbacks": keys.callbacks,
                  "callback_set": keys.callback_set, "user": keys.user(user).base,
                  "active": keys.user(user).active, "holds": bucket.holds,
                  "leases": bucket.leases, "queued": bucket.queued, "flush": bucket.flush,
                  "ledger": bucket.ledger, "webhook_log": keys.webhooks,
                  "webhooks": bucket.webhooks, "counters": bucket.counters,
                  "key_spend": keys.user(user).key_spend, "grants": keys.user(user).grants,
                  "grant_expiry": bucket.grant_expiry},
            args={"job_id": job_id, "owner": user, "now": 1, "lease_until": 2, "flush_due": 3,
                  "count": 1, "entries": ["cb-0", 0, "3", "x"]})
    assert await core.job_record(job_id) == before
