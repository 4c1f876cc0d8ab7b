"""Every script that writes several keys checks their types before its first write.

Redis has no rollback: a WRONGTYPE half-way through a script keeps the writes before it (a
hold taken, a slot used, an item counted, for good). Each case plants a string (a type no
script writes to these keys) at one key the script writes, just before the script runs,
and proves the call is refused with the 'wrong_type' code naming that key, and that
nothing under the prefix changed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from service.errors import InternalError
from service.state.keys import KeySpace
from service.state.plans import PLANS
from service.state.replies import ItemReport
from service.state.scripts import Script
from service.state.store import Core
from tests.core.job_setup import FLUSH_MS, LEASE_MS, new_job, new_user
from tests.core.redis_state import snapshot

USER = "victim62"

Call = Callable[[Core], Awaitable[Any]]


async def _ensure_user(core: Core) -> Call:
    return lambda c: c.ensure_user(USER, PLANS["free"], 10)


async def _grant(core: Core) -> Call:
    await new_user(core, USER)
    return lambda c: c.grant(USER, "op-1", 5, "gift")


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


# script -> (setup returning the call, the positions in KEYS of the keys it writes, in the
# order the script checks them)
CASES: dict[str, tuple[Callable[[Core], Awaitable[Call]], list[int]]] = {
    "ensure_user": (_ensure_user, [0, 1, 2]),
    "grant": (_grant, [0, 1, 2, 3]),
    "set_plan": (_set_plan, [0, 1]),
    "transition": (_transition, list(range(6))),
    "item_result": (_item_result, list(range(14))),
    "items_result": (_items_result, list(range(14))),
    "settle": (_settle, list(range(11))),
    "cancel": (_cancel, list(range(11))),
    "reserve": (_reserve, [0, 1, 2, 3, 5, 6, 7]),  # KEYS[5], the job meta, is SET whole
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
