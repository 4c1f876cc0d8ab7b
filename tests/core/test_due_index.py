"""The flusher's due index (service/state/due.py) on fakeredis, real Redis and a Cluster.

A pass visits the buckets with due work and no other; a write during a visit is never lost;
the safety net finds work whose index write was lost; a heavy user's backlog drains in one
pass. SQL is a SQLite file (the flusher needs one); the visits are counted by wrapping
`visit_bucket`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import service.flusher.bucket as bucket_module
import service.flusher.loop as loop
from service.flusher.loop import flush_once
from service.history.engine import make_engine, make_session_factory
from service.settings import Settings
from service.state.due import PLACEHOLDER_FLOOR, DueIndex, new_placeholder
from service.state.keys import DUE_SHARDS, KeySpace
from service.state.replies import ItemReport
from service.state.store import Core, now_ms
from tests.conftest import MigratedSqlite
from tests.core.conftest import BUCKETS
from tests.core.job_setup import new_job, new_user

pytestmark = pytest.mark.redis

Sessions = async_sessionmaker[AsyncSession]
REQUEUE_S = 300


@pytest.fixture
async def sessions(tmp_path: Path, migrated_sqlite: MigratedSqlite
                   ) -> AsyncIterator[Sessions]:
    url = migrated_sqlite(f"sqlite:///{tmp_path / 'history.db'}")
    engine = make_engine(url)
    yield make_session_factory(engine)
    await engine.dispose()


@pytest.fixture
def visits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every bucket flush_once visits, in order (one entry a round)."""
    seen: list[int] = []
    real = bucket_module.visit_bucket

    async def counted(core: Core, settings: Settings, bucket: int,
                      **kwargs: Any) -> bucket_module.Visit:
        seen.append(bucket)
        return await real(core, settings, bucket, **kwargs)

    monkeypatch.setattr(bucket_module, "visit_bucket", counted)
    return seen


def settings_for(core: Core, **extra: Any) -> Settings:
    return Settings(key_prefix=core.keys.prefix, buckets=BUCKETS, flush_delay=0,
                    requeue_after=REQUEUE_S, **extra)


def users_in_two_buckets(core: Core) -> tuple[str, str]:
    names = [f"user-{i}" for i in range(50)]
    first = names[0]
    bucket = core.keys.bucket_of_user(first)
    second = next(n for n in names if core.keys.bucket_of_user(n) != bucket)
    return first, second


async def test_a_bucket_with_due_work_is_visited_and_an_idle_one_is_not(
    core: Core, sessions: Sessions, visits: list[int]
) -> None:
    ann, bob = users_in_two_buckets(core)
    await new_user(core, ann)
    await new_user(core, bob)
    ann_bucket, bob_bucket = core.keys.bucket_of_user(ann), core.keys.bucket_of_user(bob)
    settings = settings_for(core)

    stats = await flush_once(core, sessions, settings)  # both signups wait in the ledger
    assert sorted(visits) == sorted([ann_bucket, bob_bucket])
    assert stats.ledger_entries == 2
    assert await DueIndex(core).scores() == {}  # nothing left to do anywhere

    visits.clear()
    assert not await flush_once(core, sessions, settings)
    assert visits == []  # idle buckets cost nothing

    job = await new_job(core, ann, state="created")
    await core.cancel(job, ann, reason="user", flush_delay_ms=0)
    stats = await flush_once(core, sessions, settings)
    assert visits == [ann_bucket]
    assert stats.flushed_jobs == 1


async def test_the_index_holds_the_next_due_time_and_the_flusher_waits_for_it(
    core: Core, sessions: Sessions, visits: list[int]
) -> None:
    ann, _ = users_in_two_buckets(core)
    await new_user(core, ann)
    bucket = core.keys.bucket_of_user(ann)
    hold_job = await new_job(core, ann, state="created", hold_ms=600_000)
    queued_job = await new_job(core, ann, state="queued")
    await flush_once(core, sessions, settings_for(core))  # the ledger goes, the jobs wait

    b = core.keys.bucket(bucket)
    hold_due = int(await core.client.zscore(b.holds, hold_job))
    queued_due = int(await core.client.zscore(b.queued, queued_job)) + REQUEUE_S * 1000
    assert await DueIndex(core).scores() == {bucket: min(hold_due, queued_due)}

    visits.clear()
    assert not await flush_once(core, sessions, settings_for(core))
    assert visits == []  # not due yet: not visited


async def test_a_write_during_a_visit_lowers_the_score_and_the_settle_keeps_it(
    core: Core,
) -> None:
    ann, _ = users_in_two_buckets(core)
    await new_user(core, ann)
    bucket = core.keys.bucket_of_user(ann)
    due = DueIndex(core)
    placeholder = new_placeholder()
    assert await due.take(placeholder, limit=10) == [bucket]
    assert await due.scores() == {bucket: placeholder}
    assert await due.take(new_placeholder(), limit=10) == []  # a second flusher skips it

    # The visit read "nothing to do" but a reserve came in before its settle.
    await new_job(core, ann, state="created")
    marked = (await due.scores())[bucket]
    assert marked < PLACEHOLDER_FLOOR
    assert await due.settle(bucket, placeholder, None) == "kept"
    assert await due.scores() == {bucket: marked}

    # Nobody wrote: the visit's own placeholder makes way for what it read.
    other = new_placeholder()
    assert await due.take(other, limit=10) == [bucket]
    assert await due.settle(bucket, other, None) == "removed"
    assert await due.scores() == {}


async def test_the_safety_net_finds_work_whose_index_write_was_lost(
    core: Core, sessions: Sessions, visits: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, bob = users_in_two_buckets(core)
    settings = settings_for(core)

    async def lost(self: Core, bucket: int, due_ms: int = 0, **_: object) -> None:
        """The process died between the script and its ZADD (or SADD)."""

    with monkeypatch.context() as patch:
        patch.setattr(Core, "_mark_due", lost)
        await new_user(core, ann)
    assert await DueIndex(core).scores() == {}
    assert not await flush_once(core, sessions, settings)
    assert visits == []  # the index does not know: only the safety net can find it

    stats = await flush_once(core, sessions, settings, reindex="in_use")
    assert visits == [core.keys.bucket_of_user(ann)]
    assert stats.ledger_entries == 1

    # Lost too: the bucket-in-use mark (SADD) -- the first pass of a flusher walks them all.
    visits.clear()
    with monkeypatch.context() as patch:
        patch.setattr(Core, "_mark_due", lost)
        patch.setattr(Core, "_use_bucket", lost)
        await new_user(core, bob)
    assert not await flush_once(core, sessions, settings, reindex="in_use")
    stats = await flush_once(core, sessions, settings, reindex="all")
    assert visits == [core.keys.bucket_of_user(bob)]
    assert stats.ledger_entries == 1


async def test_a_flusher_that_died_mid_visit_leaves_a_placeholder_the_safety_net_clears(
    core: Core, sessions: Sessions, visits: list[int]
) -> None:
    ann, bob = users_in_two_buckets(core)
    await new_user(core, ann)
    await new_user(core, bob)
    due = DueIndex(core)
    taken = await due.take(new_placeholder(), limit=10)  # ... and the flusher dies here
    assert len(taken) == 2
    assert not await flush_once(core, sessions, settings_for(core))
    assert visits == []

    stats = await flush_once(core, sessions, settings_for(core), reindex="in_use")
    assert sorted(visits) == sorted(taken)
    assert stats.ledger_entries == 2
    # A placeholder over a bucket with no work left goes too.
    await due.take(new_placeholder(), limit=10)
    await core.client.zadd(core.keys.due_index(taken[0]), {str(taken[0]): new_placeholder()})
    assert await due.reindex(taken, REQUEUE_S * 1000) == 0
    assert await due.scores() == {}


async def test_a_heavy_users_backlog_drains_in_one_pass(
    core: Core, sessions: Sessions, visits: list[int]
) -> None:
    ann, _ = users_in_two_buckets(core)
    await new_user(core, ann, credits=100_000)
    for _ in range(130):  # one at a time: the plan allows 10 live jobs
        job = await new_job(core, ann, state="created")
        await core.cancel(job, ann, reason="user", flush_delay_ms=0)
    stats = await flush_once(core, sessions, settings_for(core, flush_batch=20))
    assert stats.flushed_jobs == 130
    assert not stats.saturated
    assert len(visits) == 7  # 6 full rounds of 20, then one of 10
    assert set(visits) == {core.keys.bucket_of_user(ann)}


def test_the_index_shards_spread_over_slots_of_their_own(core: Core) -> None:
    keys = core.keys.due_indexes
    assert len(set(keys)) == DUE_SHARDS
    assert all(core.keys.due_index(b) in keys for b in range(BUCKETS))
    assert core.keys.due_index(3) != core.keys.due_index(4)
    assert now_ms() < PLACEHOLDER_FLOOR


async def test_every_write_that_leaves_due_work_marks_its_bucket(
    core: Core, sessions: Sessions
) -> None:
    """After each step the flusher has settled the index; the step must bring the bucket's
    score down to when its new work is due (a missing mark leaves the later time)."""
    ann, _ = users_in_two_buckets(core)
    await new_user(core, ann)
    bucket = core.keys.bucket_of_user(ann)
    due = DueIndex(core)
    settings = settings_for(core)

    async def settled() -> float | None:
        await flush_once(core, sessions, settings)
        return (await due.scores()).get(bucket)

    assert await settled() is None
    job = await new_job(core, ann, state="created", hold_ms=600_000)
    assert (await due.scores())[bucket] <= now_ms()  # the hold's ledger entry
    assert await settled() == await core.client.zscore(core.keys.bucket(bucket).holds, job)

    await core.transition(job, "created", "uploaded")
    await core.transition(job, "uploaded", "queued")
    assert (await due.scores())[bucket] <= now_ms()
    queued_at = await core.client.zscore(core.keys.bucket(bucket).queued, job)
    assert await settled() == queued_at + REQUEUE_S * 1000

    await core.transition(job, "queued", "running", lease_ms=60_000)
    lease = await core.client.zscore(core.keys.bucket(bucket).leases, job)
    assert (await due.scores())[bucket] == lease
    assert await settled() == lease

    for index in range(3):  # the last report ends the job: flush and ledger entries wait
        await core.item_result(job, ann, callback_key=f"cb-{index}", index=index, ok=True,
                               detail="out", lease_ms=60_000, flush_delay_ms=30_000)
    assert (await due.scores())[bucket] <= now_ms()
    flush_at = await core.client.zscore(core.keys.bucket(bucket).flush, job)
    assert await settled() == flush_at
    await core.client.zadd(core.keys.bucket(bucket).flush, {job: 0})  # due now, no mark:
    assert await settled() == flush_at  # not visited before the index says so
    await due.reindex([bucket], REQUEUE_S * 1000)  # the safety net sees it
    assert await settled() is None

    batched = await new_job(core, ann, state="running")
    await settled()
    await core.items_result(batched, ann, [ItemReport(f"b-{i}", i, True, "out") for i in range(3)],
                            lease_ms=60_000, flush_delay_ms=30_000)
    assert (await due.scores())[bucket] <= now_ms()

    for finish in ("settle", "cancel"):
        await core.client.zadd(core.keys.bucket(bucket).flush, {batched: 0})
        await settled()
        other = await new_job(core, ann, state="running")
        await settled()
        assert (await due.scores())[bucket] > now_ms() + 30_000  # the lease, far off
        if finish == "settle":
            await core.settle(other, ann, "failed", reason="test", flush_delay_ms=0)
        else:
            await core.cancel(other, ann, reason="user", flush_delay_ms=0)
        assert (await due.scores())[bucket] <= now_ms()
        batched = other


async def test_the_rolling_safety_net_reads_every_bucket_once_a_cycle(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One pass a second, a cycle of 3 s: a third of the buckets a pass.
    monkeypatch.setattr(loop, "SAFETY_NET_CYCLE_S", 3.0)
    net = loop.SafetyNet(core, settings_for(core, flusher_interval=1.0))
    assert await net.next_share() == "all"
    assert await net.next_share() == "all"  # until a pass with it went through
    net.done()
    for _ in range(2):  # two cycles
        shares = [await net.next_share() for _ in range(3)]
        assert all(isinstance(s, list) and len(s) <= -(-BUCKETS // 3) for s in shares)
        assert sorted(b for s in shares for b in s or []) == list(range(BUCKETS))


async def test_a_lost_sentinel_makes_the_next_share_every_bucket(core: Core) -> None:
    """A node that lost its data lost the due marks in its shards: a bucket due for a flush
    would wait for the rolling net's share (up to a minute); every bucket is read at once."""
    net = loop.SafetyNet(core, settings_for(core, flusher_interval=1.0), watch_loss=True)
    net.done()
    due = DueIndex(core)
    assert await net.next_share() == "all"  # no sentinel yet: a fresh Redis
    await due.set_sentinels(core.keys.loss_sentinels)
    assert isinstance(await net.next_share(), list)
    await core.client.delete(core.keys.loss_sentinels[3])  # one node came back empty
    assert await net.next_share() == "all"
    blind = loop.SafetyNet(core, settings_for(core, flusher_interval=1.0))  # no rebuild
    blind.done()
    assert isinstance(await blind.next_share(), list)


async def test_a_wiped_set_of_buckets_in_use_is_rebuilt_within_one_cycle(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook sender, queue position and the metrics scrape read `tg:buckets`; a Redis
    wipe empties it while the processes that would re-add a bucket wait 10 minutes."""
    users = [f"user-{i}" for i in range(40)]
    for user in users:
        await new_user(core, user)
    await new_job(core, users[0], state="queued")
    in_use = sorted({core.keys.bucket_of_user(user) for user in users})
    due = DueIndex(core)
    assert await due.buckets_in_use() == in_use
    await core.client.delete(core.keys.buckets_in_use)  # what a wipe and restore leave
    assert await due.buckets_in_use() == []
    monkeypatch.setattr(loop, "SAFETY_NET_CYCLE_S", 3.0)
    settings = settings_for(core, flusher_interval=1.0)
    net = loop.SafetyNet(core, settings)
    net.done()  # not the first pass: the rolling shares alone must find them
    for _ in range(3):
        share = await net.next_share()
        assert isinstance(share, list)
        await loop.reindex_buckets(core, settings, share)
    assert await due.buckets_in_use() == in_use
    # and the job's bucket is back in the due index too
    assert core.keys.bucket_of_user(users[0]) in await due.scores()


@pytest.fixture
def piped(real_redis: Any, key_prefix: str) -> Core:
    """The Core of the API and the flusher on a standalone Redis: auto-pipelined, its marks
    coalesced (service/state/marks.py)."""
    return Core(real_redis, KeySpace(key_prefix, BUCKETS), autopipeline=True)


async def test_the_marks_of_one_turn_go_out_as_one_zadd_a_shard(piped: Core) -> None:
    due = DueIndex(piped)
    for bucket in range(BUCKETS):  # all in one loop turn
        piped.marks.mark(bucket, 5_000 + bucket)
    piped.marks.mark(3, 1_000)  # the earlier of two marks of a bucket wins
    piped.marks.mark(3, 9_000)
    await piped.marks.sent()
    assert piped.marks.commands == min(BUCKETS, DUE_SHARDS)
    assert await due.scores() == {b: 1_000 if b == 3 else 5_000 + b for b in range(BUCKETS)}
    piped.marks.mark(3, 7_000)  # ZADD LT: a later mark never postpones an earlier one
    assert (await due.scores())[3] == 1_000


async def test_a_failed_send_of_marks_is_logged_and_raises_nowhere(
    piped: Core, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> None:
        raise ConnectionError("redis away")

    monkeypatch.setattr(piped.marks, "runner", type("Broken", (), {"execute_command": broken})())
    ann, _ = users_in_two_buckets(piped)
    await new_user(piped, ann)  # the script ran; only its mark is lost
    await piped.marks.sent()
    assert "safety net finds their work" in caplog.text
    monkeypatch.undo()
    assert await DueIndex(piped).scores() == {}
    assert await DueIndex(piped).reindex([piped.keys.bucket_of_user(ann)], 0) == 1


async def test_auto_pipelined_marks_ride_behind_their_scripts(
    piped: Core, sessions: Sessions
) -> None:
    """The API's Core (auto-pipelined, marks sent at the end of the turn) keeps the index
    as the plain one does."""
    await test_every_write_that_leaves_due_work_marks_its_bucket(piped, sessions)
    assert piped.marks.commands > 0


async def test_a_user_rebuilt_after_a_wipe_puts_its_bucket_back_in_use_at_once(
        core: Core) -> None:
    """The process that marked the bucket minutes ago would wait 10 minutes to mark it again;
    a user created or rebuilt there (after a loss, restore_user) marks it on the spot, so the
    webhook sender sees the user's new deliveries without waiting for the safety net."""
    from service.state.plans import PLANS

    await new_user(core, "ann")
    bucket = core.keys.bucket_of_user("ann")
    due = DueIndex(core)
    assert await due.buckets_in_use() == [bucket]
    async for key in core.client.scan_iter(match=f"{core.keys.prefix}:*", count=1000):
        await core.client.delete(key)  # the wipe
    assert await core.restore_user("ann", PLANS["pro"], available=5, spent=0, granted=5)
    assert await due.buckets_in_use() == [bucket]
