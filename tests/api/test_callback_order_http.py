"""Worker callbacks out of order and repeated, over HTTP with no worker: each item counts once,
a report before 'started' starts the job, and the last item settles it.

(Moved from tests/e2e: it starts no worker process.)"""

from __future__ import annotations

from tests.api.conftest import Api
from tests.api.flow import callback, me, queued_job, report_item


async def test_duplicate_and_out_of_order_callbacks(api: Api) -> None:
    user = api.user()
    job = await queued_job(api, user, 3)
    # An item report before 'started' starts the job; 'started' afterwards is a no-op.
    await report_item(api, job["id"], user, 2)
    started = await callback(api, job["id"], user, idempotency_key="late-start", event="started")
    assert started.json()["duplicate"] and started.json()["status"] == "running"
    await report_item(api, job["id"], user, 0)
    assert (await report_item(api, job["id"], user, 2))["duplicate"]
    assert (await report_item(api, job["id"], user, 0, key="retry-with-new-key"))["duplicate"]
    last = await report_item(api, job["id"], user, 1, ok=False)
    assert last["status"] == "done" and last["done_items"] == 2
    again = await report_item(api, job["id"], user, 1, ok=False)
    assert again["duplicate"] and again["status"] == "done"
    view = await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))
    assert view.status_code == 200, view.text
    assert (view.json()["charged"], view.json()["refunded"]) == (2, 1)
    credits = (await me(api, user))["credits"]
    assert (credits["spent"], credits["reserved"]) == (2, 0)
