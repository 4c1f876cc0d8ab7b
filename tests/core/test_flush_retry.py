"""flush_retry_later and flush_retry_end: a record SQL refused comes back later, a few times,
then is set aside (counted); on fakeredis, the real Redis and the cluster."""

from __future__ import annotations

import json

import pytest

from service.errors import BadArgument
from service.state.store import Core

BUCKET = 3
DELAY_MS = 1000


def ledger_entry(entry_id: str) -> str:
    return json.dumps({"id": entry_id, "user_id": "ann", "kind": "grant", "amount": 5, "at": 1})


async def test_a_refused_job_comes_back_later_with_a_doubling_delay_then_is_exhausted(
    core: Core, frozen_clock: list[int]
) -> None:
    b = core.keys.bucket(BUCKET)
    await core.client.zadd(b.flush, {"job-a": 0})
    start = frozen_clock[0]
    for attempt, delay in ((1, DELAY_MS), (2, 2 * DELAY_MS)):
        frozen_clock[0] = start + attempt
        result = await core.flush_retry_later(BUCKET, "job", "job-a", "", attempts_allowed=3,
                                              delay_ms=DELAY_MS)
        assert (result.attempts, result.first_failed_ms, result.exhausted) == (
            attempt, start + 1, False)
        assert await core.client.zscore(b.flush, "job-a") == start + attempt + delay
    frozen_clock[0] = start + 3
    last = await core.flush_retry_later(BUCKET, "job", "job-a", "", attempts_allowed=3,
                                        delay_ms=DELAY_MS)
    assert (last.attempts, last.first_failed_ms, last.exhausted) == (3, start + 1, True)
    assert await core.client.zscore(b.flush, "job-a") == start + 2 + 2 * DELAY_MS  # unchanged

    await core.flush_retry_end(BUCKET, "job", "job-a", "", set_aside=True)
    assert await core.client.hgetall(b.flush_attempts) == {}
    assert await core.counter_totals(["flush_failures"]) == {"flush_failures": 1}


async def test_a_job_flushed_meanwhile_is_not_put_back(core: Core, frozen_clock: list[int]
                                                       ) -> None:
    b = core.keys.bucket(BUCKET)
    await core.flush_retry_later(BUCKET, "job", "gone", "", attempts_allowed=5, delay_ms=1)
    assert await core.client.zscore(b.flush, "gone") is None


async def test_a_refused_ledger_entry_waits_in_the_retry_zset_until_due(
    core: Core, frozen_clock: list[int]
) -> None:
    b = core.keys.bucket(BUCKET)
    entry = ledger_entry("grant:ann:1")
    result = await core.flush_retry_later(BUCKET, "ledger", "grant:ann:1", entry,
                                          attempts_allowed=5, delay_ms=DELAY_MS)
    assert not result.exhausted
    assert await core.ledger_retries_due(BUCKET, 10) == []
    frozen_clock[0] += DELAY_MS
    assert await core.ledger_retries_due(BUCKET, 10) == [entry]

    await core.flush_retry_end(BUCKET, "ledger", "grant:ann:1", entry, set_aside=False)
    assert await core.ledger_retries_due(BUCKET, 10) == []
    assert await core.client.hgetall(b.flush_attempts) == {}
    assert await core.counter_totals(["flush_failures"]) == {"flush_failures": 0}


async def test_delays_stop_growing_at_an_hour(core: Core, frozen_clock: list[int]) -> None:
    entry = ledger_entry("x")
    for _ in range(30):
        await core.flush_retry_later(BUCKET, "ledger", "x", entry, attempts_allowed=100,
                                     delay_ms=DELAY_MS)
    score = await core.client.zscore(core.keys.bucket(BUCKET).ledger_retry, entry)
    assert score == frozen_clock[0] + 3_600_000


async def test_forgetting_job_attempts_drops_only_those_jobs(
    core: Core, frozen_clock: list[int]
) -> None:
    for job_id in ("a", "b"):
        await core.flush_retry_later(BUCKET, "job", job_id, "", attempts_allowed=5, delay_ms=1)
    await core.forget_job_attempts(BUCKET, ["a", "never-failed"])
    assert set(await core.client.hgetall(core.keys.bucket(BUCKET).flush_attempts)) == {
        "job:b", "job:b:first"}


@pytest.mark.parametrize(("kind", "record_id", "entry", "allowed"), [
    ("rule", "x", "", 3), ("job", "", "", 3), ("ledger", "x", "", 3), ("job", "x", "", 0)])
async def test_bad_arguments_write_nothing(core: Core, frozen_clock: list[int], kind: str,
                                           record_id: str, entry: str, allowed: int) -> None:
    with pytest.raises(BadArgument):
        await core.flush_retry_later(BUCKET, kind, record_id, entry, attempts_allowed=allowed,
                                     delay_ms=1)
    assert await core.client.exists(core.keys.bucket(BUCKET).flush_attempts) == 0
