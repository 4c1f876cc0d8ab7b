"""Tollgate and AsyncTollgate, written once: the same calls send the same requests and
return the same answers. One scripted API (httpx.MockTransport) answers both; every call of
the client runs, the SSE stream and the uploads included."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest

from service.client import AsyncTollgate, InvalidTransition, Job, NotFound, Tollgate
from service.client.files import FileSpec

URL = "http://api.test"


def job(job_id: str, status: str, **more: Any) -> dict[str, Any]:
    return {"id": job_id, "status": status, "total_items": 2, **more}


class FakeApi:
    """Answers the client's calls; records what reached the API and the storage."""

    def __init__(self) -> None:
        self.api: list[tuple[Any, ...]] = []
        self.storage: list[tuple[Any, ...]] = []
        self.polls: dict[str, int] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        if request.url.host == "storage.test" or path.startswith("/uploads/"):
            self.storage.append((method, str(request.url), request.content,
                                 request.headers.get("content-type"),
                                 "authorization" in request.headers))
            return httpx.Response(200)
        self.api.append((method, path, str(request.url.query, "ascii"),
                         request.headers.get("prefer"), request.headers.get("idempotency-key"),
                         request.headers.get("authorization"), request.content,
                         request.extensions["timeout"]["read"]))
        return self.answer(method, path, request)

    def answer(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
        if (method, path) == ("GET", "/me"):
            return httpx.Response(200, json={"credits": {"available": 10}})
        if (method, path) == ("POST", "/jobs"):
            uploads = [{"index": 0, "url": "http://storage.test/b/0", "headers": {"x-a": "1"}},
                       {"index": 1, "url": "/uploads/1"}]
            return httpx.Response(201, json=job("J1", "created", uploads=uploads))
        if (method, path) == ("GET", "/jobs"):
            cursor = request.url.params.get("cursor")
            return httpx.Response(200, json={
                "items": [job("J4", "done"), job("J3", "done")] if cursor
                else [job("J2", "uploaded"), job("J1", "done")],
                "next_cursor": None if cursor else "c2"})
        if path == "/jobs/J1/events":
            frames = [f"id: {n}\nevent: job\ndata: {json.dumps(job('J1', status))}\n\n"
                      for n, status in enumerate(["queued", "running", "done"])]
            return httpx.Response(200, text=": hi\n\n" + "".join(frames),
                                  headers={"content-type": "text/event-stream"})
        if path == "/jobs/J1/webhooks":
            return httpx.Response(200, json={"items": [{"id": "D1", "gave_up_at": "now"}]})
        if path == "/jobs/J1/webhooks/D1/redeliver":
            return httpx.Response(201, json={"id": "D2", "redelivery_of": "D1"})
        if path == "/jobs/J1/retry":
            return httpx.Response(201, json=job("J2", "uploaded", retry_of="J1"))
        if path == "/jobs/J1/cancel":
            return httpx.Response(409, json={"code": "invalid_transition", "title": "no",
                                             "detail": "the job is done"})
        if method == "POST" and path.endswith(("/confirm-upload", "/execute")):
            return httpx.Response(200, json=job(path.split("/")[2], (
                "uploaded" if path.endswith("confirm-upload") else "queued")))
        if method == "GET" and path in ("/jobs/J1", "/jobs/J3"):  # done at the third poll
            self.polls[path] = self.polls.get(path, 0) + 1
            return httpx.Response(200, json=job(path[6:], "done" if self.polls[path] >= 3
                                                else "running"))
        return httpx.Response(404, json={"code": "not_found", "title": "Not found"})


FILES: list[FileSpec] = [("a.txt", b"alpha", "text/plain"), ("b.png", b"\x89PNG")]


def blocking(tg: Tollgate) -> list[Any]:
    out: list[Any] = [tg.me(), tg.run(FILES, wait=2, idempotency_key="k1", model="m")]
    out += [tg.create(FILES, rule_id="r", priority="low", start_deadline_s=60),
            tg.confirm("J3"), tg.execute("J3")]
    out += [tg.wait("J3", initial_delay=0.01, factor=2), list(tg.events("J1"))]
    out += [tg.page(limit=2), [j.id for j in tg.list(limit=2, status="done")]]
    out += [tg.deliveries("J1"), tg.redeliver("J1", "D1"), tg.retry("J1", idempotency_key="k2")]
    refusals: list[Callable[[], Job]] = [lambda: tg.cancel("J1"), lambda: tg.get("nope", wait=5)]
    for refused in refusals:
        with pytest.raises((InvalidTransition, NotFound)) as caught:
            refused()
        out.append((type(caught.value).__name__, caught.value.status, caught.value.detail))
    return out


async def awaited(tg: AsyncTollgate) -> list[Any]:
    out: list[Any] = [await tg.me(), await tg.run(FILES, wait=2, idempotency_key="k1",
                                                  model="m")]
    out += [await tg.create(FILES, rule_id="r", priority="low", start_deadline_s=60),
            await tg.confirm("J3"), await tg.execute("J3")]
    out += [await tg.wait("J3", initial_delay=0.01, factor=2),
            [event async for event in tg.events("J1")]]
    out += [await tg.page(limit=2), [j.id async for j in tg.list(limit=2, status="done")]]
    out += [await tg.deliveries("J1"), await tg.redeliver("J1", "D1"),
            await tg.retry("J1", idempotency_key="k2")]
    for refused in (tg.cancel("J1"), tg.get("nope", wait=5)):
        with pytest.raises((InvalidTransition, NotFound)) as caught:
            await refused
        out.append((type(caught.value).__name__, caught.value.status, caught.value.detail))
    return out


def test_both_clients_send_the_same_requests_and_return_the_same_answers() -> None:
    sync_api, async_api = FakeApi(), FakeApi()
    with Tollgate(URL, "tok", transport=httpx.MockTransport(sync_api)) as tg:
        blocking_out = blocking(tg)

    async def main() -> list[Any]:
        async with AsyncTollgate(URL, "tok", transport=httpx.MockTransport(async_api)) as atg:
            return await awaited(atg)

    awaited_out = asyncio.run(main())
    assert msgspec.to_builtins(blocking_out) == msgspec.to_builtins(awaited_out)
    assert sync_api.api == async_api.api
    assert sorted(sync_api.storage) == sorted(async_api.storage)  # async: all at once

    me, ran, *_ = blocking_out
    assert me == {"credits": {"available": 10}} and ran.status == "done"
    assert [event.job.status for event in blocking_out[6]] == ["queued", "running", "done"]
    assert blocking_out[8] == ["J2", "J1", "J4", "J3"]
    assert blocking_out[-2:] == [("InvalidTransition", 409, "the job is done"),
                                 ("NotFound", 404, None)]
    # run(wait=2): the hold is sent and the read timeout covers it, the key only on create
    held = [(m, p, prefer, read) for m, p, _, prefer, _, _, _, read in sync_api.api
            if prefer]
    assert held == [("POST", "/jobs/J1/execute", "wait=2", 32.0),
                    ("GET", "/jobs/J1", "wait=2", 32.0), ("GET", "/jobs/J1", "wait=2", 32.0),
                    ("GET", "/jobs/J1", "wait=2", 32.0), ("GET", "/jobs/nope", "wait=5", 35.0)]
    first = sync_api.api[1]
    assert first[:2] == ("POST", "/jobs") and first[4] == "k1" and first[5] == "Bearer tok"
    assert json.loads(first[6]) == {"items": [
        {"name": "a.txt", "content_type": "text/plain", "size": 5},
        {"name": "b.png", "content_type": "image/png", "size": 4}], "model": "m"}
    created = [json.loads(entry[6]) for entry in sync_api.api if entry[:2] == ("POST", "/jobs")]
    assert {k: created[1][k] for k in ("rule_id", "priority", "start_deadline_s")} == {
        "rule_id": "r", "priority": "low", "start_deadline_s": 60}
    assert [entry[2] for entry in sync_api.api if entry[1] == "/jobs" and entry[0] == "GET"] \
        == ["limit=2", "limit=2&status=done", "limit=2&status=done&cursor=c2"]
    # uploads: to each URL (a relative one joined to the API's), never with the token
    assert sync_api.storage[:2] == [
        ("PUT", "http://storage.test/b/0", b"alpha", None, False),
        ("PUT", "http://api.test/uploads/1", b"\x89PNG", None, False)]
