"""Many clients at once over HTTP, after the last credits and the last slots."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.api.conftest import Api
from tests.api.flow import items, me


async def test_many_clients_after_the_last_credits(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=7)
    headers = api.auth(user)
    responses = await asyncio.gather(*(
        api.client.post("/jobs", json={"items": items(1)}, headers=headers) for _ in range(40)))
    counts = Counter(r.status_code for r in responses)
    assert counts == {201: 7, 402: 33}
    credits = (await me(api, user))["credits"]
    assert [g["remaining"] for g in credits.pop("grants")] == [0]  # all held from signup
    assert credits == {"available": 0, "reserved": 7, "spent": 0, "granted": 7}


async def test_many_clients_after_the_last_concurrency_slot(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=1000)
    headers = api.auth(user)
    responses = await asyncio.gather(*(
        api.client.post("/jobs", json={"items": items(2)}, headers=headers) for _ in range(40)))
    counts = Counter(r.status_code for r in responses)
    assert counts == {201: 10, 429: 30}
    assert (await me(api, user))["credits"]["reserved"] == 20


async def test_many_clients_after_the_last_rule_slots(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=0)
    headers = api.auth(user)
    responses = await asyncio.gather(*(
        api.client.post("/rules", json={"name": f"r{i}"}, headers=headers) for i in range(40)))
    counts = Counter(r.status_code for r in responses)
    assert counts == {201: 20, 409: 20}
    listed = (await api.client.get("/rules", headers=headers)).json()["items"]
    assert len(listed) == 20
    assert (await me(api, user))["rule_slots"] == {"used": 20, "limit": 20}
