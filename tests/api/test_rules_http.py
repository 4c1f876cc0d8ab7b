"""Rules over HTTP: atomic slots, isolation, and repair after a crash between SQL and Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from service.history.models import Rule
from service.runtime import open_runtime
from tests.api.conftest import SECRET, Api
from tests.api.flow import me


async def _create(api: Api, user: str, name: str = "r") -> dict[str, object]:
    response = await api.client.post("/rules", json={"name": name, "params": {"size": 64}},
                                     headers=api.auth(user))
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def test_rule_crud_and_slots(api: Api) -> None:
    user = api.user()
    rule = await _create(api, user, "first")
    assert rule["name"] == "first" and rule["params"] == {"size": 64}
    fetched = await api.client.get(f"/rules/{rule['id']}", headers=api.auth(user))
    assert fetched.json() == rule
    listed = await api.client.get("/rules", headers=api.auth(user))
    assert listed.json() == {"items": [rule]}
    await _create(api, user, "second")
    third = await api.client.post("/rules", json={"name": "third"}, headers=api.auth(user))
    assert third.status_code == 409 and third.json()["code"] == "rule_slots_exhausted"
    deleted = await api.client.delete(f"/rules/{rule['id']}", headers=api.auth(user))
    assert deleted.status_code == 204
    assert (await me(api, user))["rule_slots"] == {"used": 1, "limit": 2}
    gone = await api.client.get(f"/rules/{rule['id']}", headers=api.auth(user))
    assert gone.status_code == 404
    await _create(api, user, "third")


async def test_another_users_rule_is_a_404(api: Api) -> None:
    owner, stranger = api.user(), api.user()
    rule = await _create(api, owner)
    for method in ("GET", "DELETE"):
        response = await api.client.request(method, f"/rules/{rule['id']}",
                                             headers=api.auth(stranger))
        assert response.status_code == 404
    job = await api.client.post("/jobs", json={"items": [{"name": "a", "content_type": "a/b",
                                                          "size": 1}], "rule_id": rule["id"]},
                                headers=api.auth(stranger))
    assert job.status_code == 404


async def test_a_crash_mid_delete_or_mid_create_is_repaired(api: Api) -> None:
    user = api.user()
    kept = await _create(api, user, "kept")
    dying = await _create(api, user, "dying")
    rt = await open_runtime(api.settings, SECRET)
    try:
        # Crash after the SQL step of a delete: the row says 'deleting', the slot is held.
        async with rt.sessions() as session, session.begin():
            await session.execute(update(Rule).where(Rule.id == dying["id"])
                                  .values(state="deleting"))
        # Crash after the SQL step of a create, long ago: a pending row without a slot.
        async with rt.sessions() as session, session.begin():
            session.add(Rule(id="orphan-rule", user_id=user, name="orphan", params={},
                             state="pending", created_at=datetime.now(UTC) - timedelta(hours=1)))
    finally:
        await rt.close()
    listed = (await api.client.get("/rules", headers=api.auth(user))).json()
    assert [rule["id"] for rule in listed["items"]] == [kept["id"]]
    assert (await me(api, user))["rule_slots"]["used"] == 1
