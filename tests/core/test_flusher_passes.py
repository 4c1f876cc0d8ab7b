"""The flusher's scripts: claim_due, flush_done, ledger_ack, renew_lease."""

from __future__ import annotations

import json

import pytest
from redis.exceptions import ResponseError

from service.errors import BadArgument, InvalidTransition, NotFound
from service.state.codes import Code
from service.state.store import Core, op_digest
from tests.core.job_setup import FLUSH_MS, HOLD_MS, LEASE_MS, new_job, new_user, report
from tests.core.redis_state import snapshot

CLAIM_MS = 30_000
REQUEUE_MS = 120_000


async def claim(core: Core, bucket: int, limit: int = 10) -> tuple[list[str], ...]:
    due = await core.claim_due(bucket, limit=limit, claim_ms=CLAIM_MS, requeue_after_ms=REQUEUE_MS)
    return due.expired_holds, due.expired_leases, due.stale_queued, due.due_flushes


async def test_an_expired_hold_is_claimed_once_per_claim_window(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="uploaded")
    bucket = core.keys.bucket_of_user(user)
    start = frozen_clock[0]

    frozen_clock[0] = start + HOLD_MS - 1
    assert await claim(core, bucket) == ([], [], [], [])
    frozen_clock[0] = start + HOLD_MS
    assert await claim(core, bucket) == ([job_id], [], [], [])
    holds = core.keys.bucket(bucket).holds
    assert await core.client.zscore(holds, job_id) == frozen_clock[0] + CLAIM_MS
    # A second flusher inside the window finds nothing; after the window it finds it again.
    frozen_clock[0] += CLAIM_MS - 1
    assert await claim(core, bucket) == ([], [], [], [])
    frozen_clock[0] += 1
    assert await claim(core, bucket) == ([job_id], [], [], [])


async def test_claims_are_bounded_by_the_limit(core: Core, frozen_clock: list[int]) -> None:
    user = await new_user(core, "ann", credits=10_000)
    jobs = {await new_job(core, user, total=1) for _ in range(5)}
    bucket = core.keys.bucket_of_user(user)
    frozen_clock[0] += HOLD_MS
    claimed: list[str] = []
    for expected in (2, 2, 1, 0):
        holds = (await claim(core, bucket, limit=2))[0]
        assert len(holds) == expected
        claimed += holds
    assert sorted(claimed) == sorted(jobs)


@pytest.mark.parametrize("limit", [0, -1, 1.5])
async def test_a_limit_that_bounds_nothing_is_refused(core: Core, limit: int) -> None:
    user = await new_user(core, "ann")
    await new_job(core, user, hold_ms=0)
    with pytest.raises(ResponseError):
        await claim(core, core.keys.bucket_of_user(user), limit=limit)


async def test_an_expired_running_lease_is_claimed(core: Core, frozen_clock: list[int]) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="running")
    bucket = core.keys.bucket_of_user(user)
    frozen_clock[0] += LEASE_MS - 1
    assert await claim(core, bucket) == ([], [], [], [])
    frozen_clock[0] += 1
    assert await claim(core, bucket) == ([], [job_id], [], [])
    assert await claim(core, bucket) == ([], [], [], [])
    frozen_clock[0] += CLAIM_MS
    assert await claim(core, bucket) == ([], [job_id], [], [])


async def test_a_job_queued_too_long_is_offered_for_requeue_again_and_again(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="queued")
    bucket = core.keys.bucket_of_user(user)
    frozen_clock[0] += REQUEUE_MS - 1
    assert await claim(core, bucket) == ([], [], [], [])
    frozen_clock[0] += 1
    assert await claim(core, bucket) == ([], [], [job_id], [])
    assert await core.client.zscore(core.keys.bucket(bucket).queued, job_id) == frozen_clock[0]
    frozen_clock[0] += REQUEUE_MS - 1
    assert await claim(core, bucket) == ([], [], [], [])
    frozen_clock[0] += 1
    assert await claim(core, bucket) == ([], [], [job_id], [])


async def test_a_finished_job_is_due_for_flush_after_the_delay(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, total=1, state="running")
    await report(core, job_id, user, 0)
    bucket = core.keys.bucket_of_user(user)
    frozen_clock[0] += FLUSH_MS - 1
    assert await claim(core, bucket) == ([], [], [], [])
    frozen_clock[0] += 1
    assert await claim(core, bucket) == ([], [], [], [job_id])


async def test_claims_stay_in_their_bucket(core: Core, frozen_clock: list[int]) -> None:
    users = [await new_user(core, f"user-{n}") for n in range(40)]
    buckets = {core.keys.bucket_of_user(u) for u in users}
    assert len(buckets) > 1
    owner = users[0]
    job_id = await new_job(core, owner, hold_ms=0)
    mine = core.keys.bucket_of_user(owner)
    for bucket in buckets - {mine}:
        assert await claim(core, bucket) == ([], [], [], [])
    assert await claim(core, mine) == ([job_id], [], [], [])


async def test_flush_done_deletes_a_finished_job_and_its_indexes(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, total=1, state="running")
    await report(core, job_id, user, 0)
    keys = core.job_keys(job_id)
    assert await core.flush_done(job_id, user) is Code.OK
    for key in (keys.base, keys.items, keys.callbacks, keys.meta):
        assert await core.client.exists(key) == 0
    assert await core.client.zscore(keys.bucket.flush, job_id) is None
    assert await core.client.zscore(core.keys.user(user).jobs, job_id) is None
    # The user and the ledger stay: only the job's own records go.
    assert (await core.user_record(user))["spent"] == "10"
    assert await core.client.llen(keys.bucket.ledger) > 0


async def test_calls_for_a_flushed_job_find_nothing(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, total=2, state="running")
    await core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS)
    await core.flush_done(job_id, user)
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(NotFound):
        await report(core, job_id, user, 1)
    with pytest.raises(NotFound):
        await core.cancel(job_id, user, reason="again", flush_delay_ms=FLUSH_MS)
    with pytest.raises(NotFound):
        await core.transition(job_id, "queued", "running")
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_flush_done_again_answers_already(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user)
    await core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS)
    await core.flush_done(job_id, user)
    before = await snapshot(core.client, core.keys.prefix)
    assert await core.flush_done(job_id, user) is Code.ALREADY
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_flush_done_refuses_a_live_job(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="running")
    before = await snapshot(core.client, core.keys.prefix)
    with pytest.raises(InvalidTransition):
        await core.flush_done(job_id, user)
    assert await snapshot(core.client, core.keys.prefix) == before


async def test_ledger_ack_trims_only_when_the_head_is_the_entry_read(core: Core) -> None:
    user = await new_user(core, "ann", credits=10)
    await core.grant(user, "op-1", 5, "a")
    await core.grant(user, "op-2", 6, "b")
    bucket = core.keys.bucket_of_user(user)
    key = core.keys.bucket(bucket).ledger
    entries = await core.client.lrange(key, 0, -1)
    ids = [json.loads(e)["id"] for e in entries]
    assert ids == ["signup:ann", f"grant:ann:{op_digest('op-1')}", f"grant:ann:{op_digest('op-2')}"]

    assert await core.ledger_ack(bucket, 2, entries[0]) is Code.OK
    assert await core.client.lrange(key, 0, -1) == entries[2:]
    # A second flusher that read the same batch must not trim the next one.
    assert await core.ledger_ack(bucket, 2, entries[0]) is Code.ALREADY
    assert await core.client.lrange(key, 0, -1) == entries[2:]


async def test_ledger_ack_on_an_empty_ledger_answers_already(core: Core) -> None:
    assert await core.ledger_ack(3, 1, '{"id": "x"}') is Code.ALREADY


@pytest.mark.parametrize("count", [0, -2, 1.5])
async def test_ledger_ack_refuses_a_bad_count(core: Core, count: int) -> None:
    user = await new_user(core, "ann", credits=10)
    bucket = core.keys.bucket_of_user(user)
    key = core.keys.bucket(bucket).ledger
    head = await core.client.lindex(key, 0)
    with pytest.raises(BadArgument):
        await core.ledger_ack(bucket, count, head)
    assert await core.client.llen(key) == 1


async def test_renew_lease_pushes_a_running_jobs_deadline(
    core: Core, frozen_clock: list[int]
) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="running")
    frozen_clock[0] += 1_000
    assert await core.renew_lease(job_id, user, 90_000) is Code.OK
    leases = core.job_keys(job_id).bucket.leases
    assert await core.client.zscore(leases, job_id) == frozen_clock[0] + 90_000


@pytest.mark.parametrize("state", ["created", "queued"])
async def test_renew_lease_refuses_a_job_that_is_not_running(core: Core, state: str) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state=state)
    with pytest.raises(InvalidTransition):
        await core.renew_lease(job_id, user, 90_000)
    assert await core.client.zscore(core.job_keys(job_id).bucket.leases, job_id) is None


async def test_renew_lease_of_a_finished_job_does_not_bring_its_lease_back(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="running")
    await core.cancel(job_id, user, reason="user", flush_delay_ms=FLUSH_MS)
    with pytest.raises(InvalidTransition):
        await core.renew_lease(job_id, user, 90_000)
    assert await core.client.zscore(core.job_keys(job_id).bucket.leases, job_id) is None


async def test_renew_lease_for_another_owner_is_not_found(core: Core) -> None:
    user = await new_user(core, "ann")
    job_id = await new_job(core, user, state="running")
    with pytest.raises(NotFound):
        await core.renew_lease(job_id, "mallory", 90_000)


async def test_ping_runs_a_script(core: Core) -> None:
    assert await core.ping() is None  # nothing under the key yet
    await core.client.set(f"{core.keys.prefix}:ping", "pong")
    assert await core.ping() == "pong"  # what the script read, so the script ran
