"""A queued job's place in line (Outbox.queue_position): the jobs queued before it in every
bucket in use, read without a command per configured bucket."""

from __future__ import annotations

import asyncio
import itertools

from service.state.outbox import Outbox
from service.state.store import Core
from tests.core.job_setup import new_job, new_user


def users_in_distinct_buckets(core: Core, count: int) -> list[str]:
    found: dict[int, str] = {}
    for n in itertools.count():
        user = f"u-qpos-{n}"
        found.setdefault(core.keys.bucket_of_user(user), user)
        if len(found) == count:
            return list(found.values())
    raise AssertionError("unreachable")


async def queued_in_turn(core: Core, users: list[str]) -> list[str]:
    """One queued job per user, in this order (each a millisecond after the last)."""
    jobs = []
    for user in users:
        jobs.append(await new_job(core, user, state="queued"))
        await asyncio.sleep(0.003)
    return jobs


async def test_counts_the_jobs_queued_earlier_in_every_bucket(core: Core) -> None:
    users = [await new_user(core, u) for u in users_in_distinct_buckets(core, 3)]
    jobs = await queued_in_turn(core, users)
    outbox = Outbox(core)

    assert [await outbox.queue_position(job) for job in jobs] == [0, 1, 2]

    await core.transition(jobs[0], "queued", "running", lease_ms=60_000)
    assert await outbox.queue_position(jobs[0]) is None
    assert [await outbox.queue_position(job) for job in jobs[1:]] == [0, 1]


async def test_its_own_bucket_counts_even_when_the_in_use_set_misses_it(core: Core) -> None:
    users = [await new_user(core, u) for u in users_in_distinct_buckets(core, 1)]
    user = users[0]
    first, second = await queued_in_turn(core, [user, user])
    await core.client.srem(core.keys.buckets_in_use, core.keys.bucket_of_user(user))

    assert await Outbox(core).queue_position(second) == 1
    assert await Outbox(core).queue_position(first) == 0
