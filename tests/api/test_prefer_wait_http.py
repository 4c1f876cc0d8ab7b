"""`Prefer: wait=N` on POST /jobs/{id}/execute and GET /jobs/{id} (docs/client.md): the answer
waits until the job is final or N seconds pass, 200 with the view either way and
`Preference-Applied: wait=N`; a user's 11th concurrent wait answers at once. On Redis, the
embedded fakeredis and a Cluster."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.api.conftest import Api
from tests.api.flow import create_job, queued_job, report_item, upload_all


async def finish_later(api: Api, user: str, job_id: str, n: int, delay: float) -> float:
    """Reports every item after `delay`; returns when the last report was answered."""
    await asyncio.sleep(delay)
    for index in range(n):
        await report_item(api, job_id, user, index)
    return time.monotonic()


async def test_execute_with_a_wait_answers_the_final_view(any_api: Api) -> None:
    api, user = any_api, any_api.user()
    job = await create_job(api, user, 2)
    await upload_all(job)
    await api.client.post(f"/jobs/{job['id']}/confirm-upload", headers=api.auth(user))
    ending = asyncio.create_task(finish_later(api, user, job["id"], 2, 0.5))
    response = await api.client.post(f"/jobs/{job['id']}/execute",
                                     headers={**api.auth(user), "Prefer": "wait=20"})
    answered = time.monotonic()
    ended = await ending
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=20"
    view = response.json()
    assert (view["status"], view["done_items"], view["charged"]) == ("done", 2, 2)
    assert view["items"][0]["status"] == "ok"
    assert answered - ended < 2.0  # woken by the end, not by the 20 s


async def test_a_wait_that_runs_out_answers_the_view_as_it_is(any_api: Api) -> None:
    api, user = any_api, any_api.user()
    job = await queued_job(api, user, 2)
    started = time.monotonic()
    response = await api.client.get(f"/jobs/{job['id']}",
                                    headers={**api.auth(user), "Prefer": "wait=1"})
    assert response.status_code == 200
    assert response.headers["preference-applied"] == "wait=1"
    assert response.json()["status"] == "queued"
    assert 1.0 <= time.monotonic() - started < 5.0


async def test_without_a_wait_execute_stays_202_and_a_final_job_answers_at_once(
    any_api: Api,
) -> None:
    api, user = any_api, any_api.user()
    job = await create_job(api, user, 1)
    await upload_all(job)
    await api.client.post(f"/jobs/{job['id']}/confirm-upload", headers=api.auth(user))
    executed = await api.client.post(f"/jobs/{job['id']}/execute", headers=api.auth(user))
    assert executed.status_code == 202 and "preference-applied" not in executed.headers
    await report_item(api, job["id"], user, 0)
    started = time.monotonic()
    final = await api.client.get(f"/jobs/{job['id']}",
                                 headers={**api.auth(user), "Prefer": "wait=60"})
    assert final.json()["status"] == "done" and time.monotonic() - started < 2.0
    too_long = await api.client.get(f"/jobs/{job['id']}",
                                    headers={**api.auth(user), "Prefer": "wait=1000"})
    assert too_long.headers["preference-applied"] == "wait=60"
    ignored = await api.client.get(f"/jobs/{job['id']}",
                                   headers={**api.auth(user), "Prefer": "wait=soon"})
    assert ignored.status_code == 200 and "preference-applied" not in ignored.headers


async def test_a_users_eleventh_wait_answers_at_once(embedded_api: Api) -> None:
    api, user = embedded_api, embedded_api.user()
    job = await queued_job(api, user, 1)

    async def wait(seconds: int) -> tuple[float, Any]:
        started = time.monotonic()
        response = await api.client.get(
            f"/jobs/{job['id']}", headers={**api.auth(user), "Prefer": f"wait={seconds}"})
        return time.monotonic() - started, response

    held = [asyncio.create_task(wait(3)) for _ in range(10)]
    await asyncio.sleep(1.0)  # the ten hold their slots
    took, extra = await wait(3)
    assert extra.status_code == 200 and "preference-applied" not in extra.headers
    assert took < 1.5
    for took, response in await asyncio.gather(*held):
        assert response.headers["preference-applied"] == "wait=3" and took >= 3.0
    took, after = await wait(1)  # the slots came back
    assert after.headers["preference-applied"] == "wait=1"


async def test_the_clients_run_waits_on_the_server(embedded_api: Api, tmp_path: Any) -> None:
    from service.client import AsyncTollgate
    from tests.api.flow import PNG_BYTES

    api, user = embedded_api, embedded_api.user()
    image = tmp_path / "a.png"
    image.write_bytes(PNG_BYTES)
    gets: list[str] = []

    async def count(request: Any) -> None:
        if request.method == "GET" and "/jobs/" in request.url.path:
            gets.append(request.headers.get("prefer", ""))

    async def finish_when_queued() -> None:
        while True:
            listed = (await api.client.get("/jobs", headers=api.auth(user))).json()["items"]
            if listed and listed[0]["status"] == "queued":
                await asyncio.sleep(2.5)  # past the execute's own wait
                await report_item(api, listed[0]["id"], user, 0)
                return
            await asyncio.sleep(0.05)

    async with AsyncTollgate(api.url, api.token(user)) as tg:
        tg.http.event_hooks["request"].append(count)
        ending = asyncio.create_task(finish_when_queued())
        job = await tg.run([str(image)], wait=2, timeout=30)
        await ending
    assert (job.status, job.done_items) == ("done", 1)
    assert gets and all(prefer == "wait=2" for prefer in gets)
    assert len(gets) <= 2  # held on the server, not polled
