"""`tollgate rebucket`: users made under 64 buckets are read correctly under 1,024.

The command on the shared real Redis (a key prefix of its own), the move itself on
fakeredis, real Redis and a Cluster (the `core` fixture's backends).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any

import pytest

from service.cli.main import main
from service.settings import get_settings
from service.state.codes import Code
from service.state.keys import KeySpace
from service.state.outbox import Outbox
from service.state.plans import PLANS
from service.state.rebucket import RebucketRefused, parse_user_key, rebucket
from service.state.store import Core

pytestmark = pytest.mark.redis

OLD, NEW = 64, 1024
USERS = [f"user-{i}" for i in range(30)]
RULE = "01hzzzzzzzzzzzzzzzzzzzzzzz"


async def populate(core: Core) -> str:
    """Users with a grant, a plan, a rule slot, a webhook secret and an Idempotency-Key of a
    job that ended and was flushed; returns a live job of the first user."""
    for i, user in enumerate(USERS):
        await core.ensure_user(user, PLANS["free"], 100)
        await core.grant(user, "grant-1", 10 + i, "test")
        await core.set_plan(user, "plan-1", PLANS["pro"] if i % 2 else PLANS["free"])
        await core.rule_slot_take(user, RULE)
        await Outbox(core).secret(user, f"whsec_{user}")
        job_id = core.keys.new_job_id(user)
        await core.reserve(job_id=job_id, user_id=user, total=2, price=1,
                           hold_ttl_ms=600_000, meta_json="[]", idempotency_key="key-1",
                           body_hash="body")
        await core.cancel(job_id, user, reason="user", flush_delay_ms=0)
        await core.flush_done(job_id, user)  # as the flusher does once it is in SQL
    live = core.keys.new_job_id(USERS[0])
    await core.reserve(job_id=live, user_id=USERS[0], total=1, price=1, hold_ttl_ms=600_000,
                       meta_json="[]")
    return live


async def user_keys(client: Any, prefix: str) -> list[Any]:
    keys = [parse_user_key(prefix, key)
            async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    return [key for key in keys if key is not None]


async def check_moved(client: Any, prefix: str) -> None:
    new = Core(client, KeySpace(prefix, NEW))
    for i, user in enumerate(USERS):
        record = await new.user_record(user)
        assert record["plan"] == ("pro" if i % 2 else "free"), user
        assert int(record["available"]) == 100 + 10 + i  # the canceled job refunded
        assert await new.holds_rule_slot(user, RULE)
        # The ops hash moved: the same grant is not applied twice.
        balance = await new.grant(user, "grant-1", 10 + i, "test")
        assert (balance.code, balance.available) == (Code.ALREADY, 110 + i)
        assert await Outbox(new).secret(user, "whsec_other") == f"whsec_{user}"
        # The Idempotency-Key moved and still names the job (its id keeps its old bucket).
        code, job_id = await new.reserve(
            job_id=new.keys.new_job_id(user), user_id=user, total=2, price=1,
            hold_ttl_ms=600_000, meta_json="[]", idempotency_key="key-1", body_hash="body")
        assert code is Code.ALREADY
        assert job_id.endswith(f"-{zlib.crc32(user.encode()) % OLD}")
    left = await user_keys(client, prefix)
    assert left
    assert all(key.bucket == zlib.crc32(key.user_id.encode()) % NEW for key in left)
    assert {int(b) for b in await client.smembers(new.keys.buckets_in_use)} >= {
        new.keys.bucket_of_user(user) for user in USERS}


async def test_users_made_under_64_buckets_are_read_under_1024_after_the_move(
    core: Core, backend: str
) -> None:
    prefix = core.keys.prefix
    old = Core(core.client, KeySpace(prefix, OLD))
    live = await populate(old)
    movers = [u for u in USERS if zlib.crc32(u.encode()) % OLD != zlib.crc32(u.encode()) % NEW]
    assert len(movers) > 10

    with pytest.raises(RebucketRefused, match="1 holds"):
        await rebucket(core.client, prefix, OLD, NEW)
    with pytest.raises(RebucketRefused, match="only growing"):
        await rebucket(core.client, prefix, OLD, 16)
    await old.cancel(live, USERS[0], reason="user", flush_delay_ms=0)
    with pytest.raises(RebucketRefused, match="1 flush"):
        await rebucket(core.client, prefix, OLD, NEW)
    await old.flush_done(live, USERS[0])

    before = sorted(k.key for k in await user_keys(core.client, prefix))
    dry = await rebucket(core.client, prefix, OLD, NEW, dry_run=True)
    assert (dry.users, dry.moved_users) == (len(USERS), len(movers))
    assert sorted(k.key for k in await user_keys(core.client, prefix)) == before
    report = await rebucket(core.client, prefix, OLD, NEW)
    assert (report.users, report.moved_users, report.moved_keys) == (
        len(USERS), len(movers), dry.moved_keys)
    # hash, rules, ops, webhook secret, idempotency key, grants (active and jobs are empty:
    # gone)
    assert report.moved_keys == 6 * len(movers)
    await check_moved(core.client, prefix)
    again = await rebucket(core.client, prefix, OLD, NEW)  # a second run finds it done
    assert again.moved_keys == 0


async def test_an_account_event_waiting_for_delivery_moves_with_its_user(core: Core) -> None:
    prefix = core.keys.prefix
    old = Core(core.client, KeySpace(prefix, OLD))
    user = next(u for u in USERS if zlib.crc32(u.encode()) % OLD != zlib.crc32(u.encode()) % NEW)
    await old.ensure_user(user, PLANS["pro"], 10)
    await old.alert_set(user, low_balance=5, hook_url="https://h.example/",
                        hook_events=("credits.low",), floor=1)
    await old.grant(user, "take", -6, "test")  # 10 -> 4: credits.low recorded
    [delivery] = await Outbox(old).claim(old.keys.bucket_of_user(user), limit=10, claim_ms=0)
    assert delivery.startswith("acct.") and delivery.endswith(f".{user}")
    await rebucket(core.client, prefix, OLD, NEW)
    new = Outbox(Core(core.client, KeySpace(prefix, NEW)))
    assert await new.claim(old.keys.bucket_of_user(user), limit=10, claim_ms=0) == []
    assert await new.claim(new.keys.bucket_of_user(user), limit=10, claim_ms=0) == [delivery]
    assert await new.record(delivery) is not None  # its log moved too
    await new.result(delivery, "delivered", attempts_seen=0, status=200, log_ttl_ms=60_000)
    assert await new.claim(new.keys.bucket_of_user(user), limit=10, claim_ms=0) == []


async def test_a_key_in_neither_bucket_stops_the_move(core: Core) -> None:
    """TOLLGATE_BUCKETS not the count the data was made with: nothing is guessed."""
    old = Core(core.client, KeySpace(core.keys.prefix, 16))
    await old.ensure_user("ann", PLANS["free"], 1)
    assert zlib.crc32(b"ann") % 16 != zlib.crc32(b"ann") % OLD  # so it is in neither
    with pytest.raises(RebucketRefused, match="neither bucket"):
        await rebucket(core.client, core.keys.prefix, OLD, NEW)


async def test_tollgate_rebucket_on_real_redis(
    real_redis: Any, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old = Core(real_redis, KeySpace(key_prefix, OLD))
    live = await populate(old)
    for name, value in (("REDIS_URL", redis_url), ("KEY_PREFIX", key_prefix),
                        ("BUCKETS", str(OLD))):
        monkeypatch.setenv(f"TOLLGATE_{name}", value)
    get_settings.cache_clear()
    try:
        # a live job
        assert await asyncio.to_thread(main, ["rebucket", "--to", str(NEW)]) == 1
        assert "refused: jobs are live" in capsys.readouterr().out
        await old.cancel(live, USERS[0], reason="user", flush_delay_ms=0)
        await old.flush_done(live, USERS[0])
        assert await asyncio.to_thread(main, ["rebucket", "--to", str(NEW),
                                              "--dry-run"]) == 0
        assert "would move" in capsys.readouterr().out
        assert await asyncio.to_thread(main, ["rebucket", "--to", str(NEW)]) == 0
        out = capsys.readouterr().out
        assert f"{len(USERS)} users" in out and f"TOLLGATE_BUCKETS={NEW}" in out
    finally:
        get_settings.cache_clear()
    await check_moved(real_redis, key_prefix)


async def test_a_grants_expiry_and_its_warning_move_with_its_user(core: Core) -> None:
    """The bucket indexes of a moved user's expiring grant (its expiry, its credits.expiring
    warning not sent yet) move with it, so both still happen after the move."""
    prefix = core.keys.prefix
    old = Core(core.client, KeySpace(prefix, OLD))
    user = next(u for u in USERS if zlib.crc32(u.encode()) % OLD != zlib.crc32(u.encode()) % NEW)
    await old.ensure_user(user, PLANS["pro"], 0)
    expires = int(time.time() * 1000) + 2 * 86_400_000
    await old.grant(user, "expiring", 10, "test", expires_at_ms=expires)
    source = old.keys.user(user).bucket
    [member] = await core.client.zrange(source.grant_warn, 0, -1)
    await rebucket(core.client, prefix, OLD, NEW)
    target = Core(core.client, KeySpace(prefix, NEW)).keys.user(user).bucket
    assert await core.client.zscore(target.grant_warn, member) == expires - 86_400_000
    assert await core.client.zscore(target.grant_expiry, member) == expires
    assert await core.client.zcard(source.grant_warn) == 0
    assert await core.client.zcard(source.grant_expiry) == 0
