"""A Redis that lost a user loses its API keys and their spend counters too: the first
request through a key rebuilds them from SQL (api_keys, and what jobs_log charged through
the key this period). FLUSHALL runs on a redis-server of the test's own."""

from __future__ import annotations

from service.runtime import open_runtime
from tests.api.conftest import SECRET, Api
from tests.api.flow import items, report_item, upload_all
from tests.api.history import flush_everything
from tests.api.test_keys_http import bearer, keys_of, new_key
from tests.api.test_redis_loss import flushall, own_api  # noqa: F401
from tests.persistence.conftest import database_url  # noqa: F401


async def test_keys_and_their_period_spend_come_back_from_sql(own_api: Api) -> None:  # noqa: F811
    api, user = own_api, "kim"
    await api.admin_create_user(user, plan="pro", credits=50)
    key = await new_key(api, user, spend_cap={"credits": 6, "period": "day"})
    auth = bearer(key["secret"])
    made = await api.client.post("/jobs", json={"items": items(3)}, headers=auth)
    assert made.status_code == 201, made.text
    job = made.json()
    await upload_all(job)
    for step in ("confirm-upload", "execute"):
        answer = await api.client.post(f"/jobs/{job['id']}/{step}", headers=auth)
        assert answer.status_code in (200, 202), answer.text
    for index, ok in enumerate((True, True, False)):  # charged 2, 1 back to the key
        await report_item(api, job["id"], user, index, ok=ok)
    live = await api.client.post("/jobs", json={"items": items(2)}, headers=auth)
    assert live.status_code == 201  # held when Redis is lost: released, not charged
    await flush_everything(api)
    assert (await keys_of(api, user))[0]["spent_this_period"] == 2 + 2

    await flushall(api)

    assert (await api.client.get("/me", headers=auth)).status_code == 200  # rebuilt
    [listed] = await keys_of(api, user)
    assert (listed["id"], listed["spent_this_period"]) == (key["id"], 2)
    answers = [(await api.client.post("/jobs", json={"items": items(1)}, headers=auth))
               .status_code for _ in range(5)]
    assert answers == [201] * 4 + [402]  # 2 + 4 = the cap of 6
    rt = await open_runtime(api.settings, SECRET)
    try:
        record = await rt.core.key_record(user, key["id"])
        assert record is not None and record.cap == 6
    finally:
        await rt.close()
