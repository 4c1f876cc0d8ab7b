"""Every script that writes several keys checks their types before its first write.

Redis has no rollback: a WRONGTYPE half-way through a script keeps the writes before it (a
hold taken, a slot used, an item counted, for good). Each case plants a string (a type no
script writes to these keys) at one key the script writes, just before the script runs,
and proves the call is refused with the 'wrong_type' code naming that key, and that
nothing under the prefix changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.exceptions import ResponseError

from service.errors import InternalError
from service.state.keys import KeySpace
from service.state.outbox import Outbox
from service.state.plans import PLANS
from service.state.replies import ItemReport
from service.state.sched import SchedState
from service.state.scripts import Script
from service.state.store import Core, now_ms
from tests.core.job_setup import FLUSH_MS, LEASE_MS, new_job, new_user
from tests.core.redis_state import snapshot

USER = "victim62"

Call = Callable[[Core], Awaitable[Any]]


async def _ensure_user(core: Core) -> Call:
    return lambda c: c.ensure_user(USER, PLANS["free"], 10)


async def _grant(core: Core) -> Call:
    await new_user(core, USER)
    return lambda c: c.grant(USER, "op-1", 5, "gift")


async def _alert_set(core: Core) -> Call:
    await new_user(core, USER)
    return lambda c: c.alert_set(USER, low_balance=5, hook_url="https://h.example/",
                                 hook_events=("credits.low",), floor=1)


async def _set_plan(core: Core) -> Call:
    await new_user(core, USER, plan="free")
    return lambda c: c.set_plan(USER, "op-1", PLANS["pro"])


async def _transition(core: Core) -> Call:
    await new_user(core, USER)
    job_id = await new_job(core, USER, state="queued")
    return lambda c: c.transition(job_id, "queued", "running", owner=USER, lease_ms=LEASE_MS)


async def _item_result(core: Core) -> Call:
    await new_user(core, USER)
    job_id = await new_job(core, USER, total=1, state="running")
    return lambda c: c.item_result(job_id, USER, callback_key="cb-0", index=0, ok=True,
                                   detail="out/0", lease_ms=LEASE_MS, flush_delay_ms=FLUSH_MS)


async def _items_result(core: Core) -> Call:
    await new_user(core, USER)
    job_id = await new_job(core, USER, total=2, state="running")
    reports = [ItemReport("cb-0", 0, True, "out/0"), ItemReport("cb-1", 1, False, "boom")]
    return lambda c: c.items_result(job_id, USER, reports, lease_ms=LEASE_MS,
                                    flush_delay_ms=FLUSH_MS)


async def _settle(core: Core) -> Call:
    await new_user(core, USER)
    job_id = await new_job(core, USER, state="running")
    return lambda c: c.settle(job_id, USER, "failed", reason="x", flush_delay_ms=FLUSH_MS)


async def _cancel(core: Core) -> Call:
    await new_user(core, USER)
    job_id = await new_job(core, USER, state="queued")
    return lambda c: c.cancel(job_id, USER, reason="user", flush_delay_ms=FLUSH_MS)


async def _reserve(core: Core) -> Call:
    await new_user(core, USER)
    job_id = core.keys.new_job_id(USER)
    return lambda c: c.reserve(job_id=job_id, user_id=USER, total=2, price=1,
                               hold_ttl_ms=60_000, meta_json="[]", idempotency_key="k-1",
                               body_hash="h")


async def _flush_done(core: Core) -> Call:
    await new_user(core, USER)
    job_id = await new_job(core, USER)
    await core.cancel(job_id, USER, reason="user", flush_delay_ms=0)
    return lambda c: c.flush_done(job_id, USER)


async def _flush_retry_later(core: Core) -> Call:
    bucket = core.keys.bucket_of_user(await new_user(core, USER))
    return lambda c: c.flush_retry_later(bucket, "ledger", "grant:x", '{"id": "grant:x"}',
                                         attempts_allowed=3, delay_ms=1_000)


async def _flush_retry_end(core: Core) -> Call:
    bucket = core.keys.bucket_of_user(await new_user(core, USER))
    entry = '{"id": "grant:x"}'
    await core.flush_retry_later(bucket, "ledger", "grant:x", entry, attempts_allowed=3,
                                 delay_ms=1_000)
    return lambda c: c.flush_retry_end(bucket, "ledger", "grant:x", entry, set_aside=True)


async def _webhook_result(core: Core) -> Call:
    await new_user(core, USER)
    job_id = core.keys.new_job_id(USER)
    await core.reserve(job_id=job_id, user_id=USER, total=1, price=1, hold_ttl_ms=60_000,
                       meta_json="[]", webhook_url="http://127.0.0.1:9/hook",
                       webhook_events=("started",))
    for from_state, to_state in (("created", "uploaded"), ("uploaded", "queued"),
                                 ("queued", "running")):
        await core.transition(job_id, from_state, to_state, lease_ms=LEASE_MS)
    delivery = f"{job_id}.started"
    assert await Outbox(core).record(delivery) is not None
    return lambda c: Outbox(c).result(delivery, "delivered", attempts_seen=0, status=200,
                                      log_ttl_ms=60_000)


async def _grants_expire(core: Core) -> Call:
    bucket = core.keys.bucket_of_user(await new_user(core, USER))
    await core.grant(USER, "op-exp", 5, "gift", expires_at_ms=now_ms() + 50)
    await asyncio.sleep(0.1)  # the grant is past its expires_at
    return lambda c: c.expire_grants(bucket)


async def _grants_warn(core: Core) -> Call:
    bucket = core.keys.bucket_of_user(await new_user(core, USER))
    # expiring in a little under 24 h: its credits.expiring warning is due now
    await core.grant(USER, "op-warn", 5, "gift", expires_at_ms=now_ms() + 86_400_000 - 100)
    await asyncio.sleep(0.1)
    return lambda c: c.warn_grants(bucket)


async def _admit(core: Core) -> Call:
    await new_user(core, USER)
    job_id = await new_job(core, USER, state="uploaded")
    return lambda c: SchedState(c).admit(job_id, USER, queue="gpu", vtime=0.0, batch_size=8,
                                         weights="free:1,pro:4")


# script -> (setup returning the call, the positions in KEYS of the keys it writes, in the
# order the script checks them)
CASES: dict[str, tuple[Callable[[Core], Awaitable[Call]], list[int]]] = {
    "ensure_user": (_ensure_user, [0, 1, 2]),
    # KEYS[7..8]: the account log and due set (includes/alerts.lua)
    "grant": (_grant, [0, 1, 2, 3, 4, 5, 6, 7, 8]),
    "alert_set": (_alert_set, [0]),
    "set_plan": (_set_plan, [0, 1]),
    "transition": (_transition, list(range(6))),
    "item_result": (_item_result, list(range(14))),
    "items_result": (_items_result, list(range(14))),
    "settle": (_settle, list(range(11))),
    "cancel": (_cancel, list(range(11))),
    # KEYS[5], the job meta, is SET whole; KEYS[11] (key spend) is written only with a key;
    # KEYS[12..13]: the account log and due set (includes/alerts.lua)
    "reserve": (_reserve, [0, 1, 2, 3, 5, 6, 7, 8, 9, 11, 12]),
    # KEYS[2..4] and [7] (items, callbacks, meta, callback set) are only DELeted: any type
    "flush_done": (_flush_done, [0, 4, 5, 7]),
    "flush_retry_later": (_flush_retry_later, [0, 1, 2]),
    "flush_retry_end": (_flush_retry_end, [0, 1, 2]),
    "webhook_result": (_webhook_result, [0, 1, 2]),
    # KEYS[6..7]: the account log and the bucket's webhooks (includes/alerts.lua)
    "grants_expire": (_grants_expire, [0, 1, 2, 3, 4, 5, 6]),
    # the warning index first; KEYS[2], the grants, is read before each ZREM
    "grants_warn": (_grants_warn, [2, 0, 1, 3, 4]),
    "admit": (_admit, list(range(7))),
}

PARAMS = [(script, key) for script, (_, keys) in CASES.items() for key in keys]


@pytest.fixture(params=["real", "fake"])
def core(request: pytest.FixtureRequest, key_prefix: str) -> Core:
    client = request.getfixturevalue("real_redis" if request.param == "real" else "fake_redis")
    return Core(client, KeySpace(key_prefix, 16))


class PlantFirst:
    """Runs the script after planting a string at its KEYS[at] and taking a snapshot."""

    def __init__(self, script: Script, at: int, prefix: str) -> None:
        self.script, self.at, self.prefix = script, at, prefix
        self.planted = ""
        self.before: dict[str, Any] = {}

    async def __call__(self, client: Any, keys: list[str], args: list[str | int]) -> Any:
        self.planted = keys[self.at]
        await client.execute_command("SET", self.planted, "not-this-type")
        self.before = await snapshot(client, self.prefix)
        return await self.script(client, keys, args)


@pytest.mark.parametrize(("script", "key"), PARAMS, ids=[f"{s}-KEYS[{k + 1}]" for s, k in PARAMS])
async def test_a_wrong_typed_key_is_refused_before_any_write(core: Core, key_prefix: str,
                                                             script: str, key: int) -> None:
    setup, written = CASES[script]
    call = await setup(core)
    plant = PlantFirst(core.scripts[script], key, key_prefix)
    core.scripts[script] = plant  # type: ignore[assignment]
    with pytest.raises(InternalError) as raised:
        await call(core)
    assert plant.planted.startswith(key_prefix)
    assert raised.value.code == "internal_error"
    assert f"{script}: wrong_type" in str(raised.value)
    assert raised.value.extra["reply"] == [written.index(key) + 1]  # names the planted key
    assert await snapshot(core.client, key_prefix) == plant.before


@pytest.mark.parametrize("script", list(CASES))
async def test_with_the_right_types_the_same_call_succeeds(core: Core, script: str) -> None:
    """The cases above are refused for the planted key, not for their setup."""
    setup, _ = CASES[script]
    call = await setup(core)
    await call(core)


@pytest.mark.parametrize("key", range(4))
async def test_claim_due_on_a_wrong_typed_index_claims_nothing(core: Core, key_prefix: str,
                                                               key: int) -> None:
    """claim_due answers lists, not codes: its refusal is an error reply, as for bad
    arguments, and no index entry is pushed into the future."""
    await new_user(core, USER)
    for state in ("created", "uploaded", "queued", "running"):
        await new_job(core, USER, state=state, hold_ms=0)
    bucket = core.keys.bucket_of_user(USER)
    plant = PlantFirst(core.scripts["claim_due"], key, key_prefix)
    core.scripts["claim_due"] = plant  # type: ignore[assignment]
    with pytest.raises(ResponseError, match=f"claim_due: wrong_type {key + 1}"):
        await core.claim_due(bucket, limit=10, claim_ms=60_000, requeue_after_ms=0)
    assert await snapshot(core.client, key_prefix) == plant.before
