"""POST /jobs with an Idempotency-Key it has seen: the replay answers the original job
before anything else is looked up, so a rule deleted since changes nothing."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.api.flow import items, me


async def test_a_replay_answers_its_job_after_the_rule_was_deleted(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=100)
    rule = await api.client.post("/rules", json={"name": "preset"}, headers=api.auth(user))
    assert rule.status_code == 201, rule.text
    body = {"items": items(2), "rule_id": rule.json()["id"]}
    headers = {**api.auth(user), "Idempotency-Key": "retry-me"}
    first = await api.client.post("/jobs", json=body, headers=headers)
    assert first.status_code == 201, first.text
    assert first.json()["idempotent_replay"] is False
    deleted = await api.client.delete(f"/rules/{rule.json()['id']}", headers=api.auth(user))
    assert deleted.status_code == 204

    again = await api.client.post("/jobs", json=body, headers=headers)
    assert again.status_code == 201, again.text
    replay = again.json()
    assert replay["idempotent_replay"] is True
    assert (replay["id"], replay["status"], replay["cost"], replay["rule_id"]) == (
        first.json()["id"], "created", first.json()["cost"], first.json()["rule_id"])
    assert [u["index"] for u in replay["uploads"]] == [0, 1]  # still created: fresh URLs
    assert (await me(api, user))["credits"]["reserved"] == first.json()["cost"]  # held once

    # The same key with another body is a reuse, whatever became of the rule.
    other = await api.client.post("/jobs", json={**body, "items": items(1)}, headers=headers)
    assert other.status_code == 422, other.text
    assert other.json()["code"] == "idempotency_key_reused"
    # A new key still resolves the rule, which is gone.
    fresh = await api.client.post("/jobs", json=body,
                                  headers={**api.auth(user), "Idempotency-Key": "new-one"})
    assert fresh.status_code == 404, fresh.text
