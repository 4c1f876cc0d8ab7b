"""The API on a 3-node Redis Cluster for state (RQ stays on a standalone Redis)."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.api.flow import create_job, me, report_item, upload_all


async def test_a_job_lives_its_whole_life_with_state_on_redis_cluster(cluster_api: Api) -> None:
    api, user = cluster_api, cluster_api.user()
    job = await create_job(api, user, 2)
    await upload_all(job)
    for action, status in (("confirm-upload", 200), ("execute", 202)):
        response = await api.client.post(f"/jobs/{job['id']}/{action}", headers=api.auth(user))
        assert response.status_code == status, response.text
    await report_item(api, job["id"], user, 0)
    await report_item(api, job["id"], user, 1, ok=False)
    view = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert (view["status"], view["charged"], view["refunded"]) == ("done", 1, 1)
    listed = (await api.client.get("/jobs", headers=api.auth(user))).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]
    credits = (await me(api, user))["credits"]
    assert [g["remaining"] for g in credits.pop("grants")] == [9]  # back to the signup grant
    assert credits == {"available": 9, "reserved": 0, "spent": 1, "granted": 10}
    assert (await api.client.get("/ready")).status_code == 200
