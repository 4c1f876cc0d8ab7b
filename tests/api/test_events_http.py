"""Live progress over real HTTP (GET /jobs/{id}/events), queue positions and links."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import httpx
from litestar import Litestar

from service.flusher.loop import run_flusher_with_requeue
from service.settings import Settings
from tests.api.conftest import Api, ServerThread
from tests.api.flow import create_job, queued_job, report_item, upload_all
from tests.api.scheduling import drain


async def read_events(api: Api, user: str, job_id: str, into: list[tuple[float, dict[str, Any]]],
                      first: asyncio.Event | None = None) -> None:
    """Appends (arrival time, event) for every event of the stream until it ends; sets
    `first` on the first one."""
    async with api.client.stream("GET", f"/jobs/{job_id}/events", headers=api.auth(user)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        async for line in r.aiter_lines():
            if line == "":
                if "data" in event:
                    into.append((time.monotonic(), event))
                    if first is not None:
                        first.set()
                event = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                event[name] = json.loads(value) if name == "data" else value


async def test_a_stream_shows_every_change_until_the_end(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=100)
    job = await create_job(api, user, 3)
    events: list[tuple[float, dict[str, Any]]] = []
    opened = time.monotonic()
    first = asyncio.Event()
    reader = asyncio.create_task(read_events(api, user, job["id"], events, first))
    await asyncio.wait_for(first.wait(), 5)
    assert events[0][0] - opened < 1.0  # the first event comes at once
    assert events[0][1]["data"]["status"] == "created"

    async def step(call: Any) -> None:
        await call
        await asyncio.sleep(0.4)  # longer than a poll interval: each change its own event

    await upload_all(job)
    await step(api.client.post(f"/jobs/{job['id']}/confirm-upload", headers=api.auth(user)))
    await step(api.client.post(f"/jobs/{job['id']}/execute", headers=api.auth(user)))
    for index in range(3):
        await step(report_item(api, job["id"], user, index, ok=index != 1))
    await asyncio.wait_for(reader, 10)  # the stream ended by itself

    shown = [(e["data"]["status"], e["data"]["done_items"], e["data"]["failed_items"])
             for _, e in events]
    assert shown == [("created", 0, 0), ("uploaded", 0, 0), ("queued", 0, 0),
                     ("running", 1, 0), ("running", 1, 1), ("done", 2, 1)]
    assert all(e["event"] == "job" for _, e in events)
    assert [int(e["id"]) for _, e in events] == list(range(len(events)))
    assert events[2][1]["data"]["queue_position"] == 0
    assert events[-1][1]["data"]["links"]["events"] == f"{api.url}/jobs/{job['id']}/events"


async def test_changes_faster_than_the_poll_come_at_most_every_250_ms(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=100)
    job = await queued_job(api, user, 20)
    events: list[tuple[float, dict[str, Any]]] = []
    first = asyncio.Event()
    reader = asyncio.create_task(read_events(api, user, job["id"], events, first))
    await asyncio.wait_for(first.wait(), 5)
    for index in range(20):
        await report_item(api, job["id"], user, index)
        await asyncio.sleep(0.02)
    await asyncio.wait_for(reader, 10)
    assert events[-1][1]["data"]["status"] == "done"
    assert len(events) < 20  # coalesced
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(events[1:])]
    assert all(gap > 0.2 for gap in gaps), gaps


async def test_a_finished_job_streams_once_and_another_users_job_is_404(api: Api) -> None:
    user = api.user()
    job = await queued_job(api, user, 1)
    await report_item(api, job["id"], user, 0)
    await run_flusher_with_requeue(api.settings, once=True)
    events: list[tuple[float, dict[str, Any]]] = []
    await asyncio.wait_for(read_events(api, user, job["id"], events), 5)
    assert [e["data"]["status"] for _, e in events] == ["done"]
    assert events[0][1]["data"]["queue_position"] is None

    other = await api.client.get(f"/jobs/{job['id']}/events", headers=api.auth(api.user()))
    assert other.status_code == 404
    assert other.json()["code"] == "not_found"


async def test_queued_jobs_show_their_place_and_every_job_its_links(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=100)
    first = await queued_job(api, user, 1)
    second = await queued_job(api, user, 1)
    assert (first["queue_position"], second["queue_position"]) == (0, 1)
    created = await create_job(api, user, 1)
    assert created["queue_position"] is None
    base = f"{api.url}/jobs/{created['id']}"
    assert created["links"] == {"self": base, "events": f"{base}/events",
                                "cancel": f"{base}/cancel"}

    listed = await api.client.get("/jobs", headers=api.auth(user))
    places = {job["id"]: job["queue_position"] for job in listed.json()["items"]}
    assert places == {first["id"]: 0, second["id"]: 1, created["id"]: None}

    await report_item(api, first["id"], user, 0)  # done
    await drain(api.settings)  # every waiting batch is in RQ: each job's place is 0
    response = await api.client.get(f"/jobs/{second['id']}", headers=api.auth(user))
    assert response.json()["queue_position"] == 0
    response = await api.client.get(f"/jobs/{first['id']}", headers=api.auth(user))
    assert response.json()["queue_position"] is None


async def test_a_stream_on_the_embedded_defaults(embedded_api: Api) -> None:
    api = embedded_api
    user = api.user()
    job = await create_job(api, user, 1)
    events: list[tuple[float, dict[str, Any]]] = []
    first = asyncio.Event()
    reader = asyncio.create_task(read_events(api, user, job["id"], events, first))
    await asyncio.wait_for(first.wait(), 5)
    canceled = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    assert canceled.status_code == 200
    await asyncio.wait_for(reader, 10)
    assert [e["data"]["status"] for _, e in events] == ["created", "canceled"]


async def test_a_stream_the_client_closed_is_no_longer_watched(real_settings: Settings,
                                                               real_redis: Any) -> None:
    port = int(real_settings.public_url.rsplit(":", 1)[1])
    with ServerThread(real_settings, port) as served:
        async with httpx.AsyncClient(base_url=real_settings.public_url, timeout=30) as client:
            api = Api(real_settings.public_url, real_settings, client)
            user = api.user()
            job = await create_job(api, user, 1)
            async with client.stream("GET", f"/jobs/{job['id']}/events",
                                     headers=api.auth(user)) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        break
                app = served.server.config.app
                assert isinstance(app, Litestar)
                watch = app.state.change_watch
                assert list(watch.watchers) == [job["id"]]
            deadline = time.monotonic() + 5
            while watch.watchers:
                assert time.monotonic() < deadline, "the closed stream is still watched"
                await asyncio.sleep(0.05)
            await asyncio.sleep(watch.interval * 2)
            assert watch.task is None or watch.task.done()  # the poll stops with no streams
