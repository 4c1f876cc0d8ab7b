"""Bodies without valid credentials, over raw sockets: the worker
callback checks its token before it reads the body, and a body on a path with no valid
credentials is read on strict terms (64 KiB, 5 s)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from litestar import Litestar, Request, post
from litestar.middleware import DefineMiddleware

from service.api.connections import (
    UNVOUCHED_BODY_BYTES,
    body_deadline_middleware,
    vouch,
)
from service.api.problems import EXCEPTION_HANDLERS
from tests.api.conftest import Api
from tests.api.flow import items, queued_job, worker_auth
from tests.conftest import free_port


async def _send_head(port: int, head: str, first: bytes = b""
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode() + b"\r\n" + first)
    await writer.drain()
    return reader, writer


async def _status(reader: asyncio.StreamReader, within: float) -> tuple[int, dict[str, Any]]:
    """The status line and the JSON body of the answer, which must come within `within` s."""
    raw = await asyncio.wait_for(reader.read(65536), within)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body) if body else {}
    except ValueError:
        return status, {}


def _post(path: str, length: int, headers: str = "") -> str:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{headers}")


def _port(api: Api) -> int:
    return int(api.url.rsplit(":", 1)[1])


async def test_a_callback_with_a_bad_token_is_401_before_its_body(embedded_api: Api) -> None:
    api, port = embedded_api, _port(embedded_api)
    job_id = "01jabcdefghjkmnpqrstvwxyz0-3"
    started = time.monotonic()
    # Many at once, each declaring 100,000 bytes and sending one: each is answered at once.
    opened = [await _send_head(port, _post(f"/jobs/{job_id}/callback", 100_000,
                                           "Authorization: Bearer nope\r\n"), b"{")
              for _ in range(50)]
    answers = await asyncio.gather(*(_status(reader, 2.0) for reader, _ in opened))
    assert {status for status, _ in answers} == {401}
    assert {body["code"] for _, body in answers} == {"unauthorized"}
    assert time.monotonic() - started < 5
    for _, writer in opened:
        writer.close()
    # Meanwhile the API serves a user at once.
    user = api.user()
    assert (await api.client.get("/me", headers=api.auth(user))).status_code == 200


async def test_a_callback_with_its_token_may_take_longer_than_5_s(embedded_api: Api) -> None:
    api = embedded_api
    user = api.user()
    job = await queued_job(api, user, 1)
    body = json.dumps({"event": "started", "idempotency_key": "s-1"}).encode()
    token = worker_auth(job["id"], user)["Authorization"]
    reader, writer = await _send_head(
        _port(api), _post(f"/jobs/{job['id']}/callback", len(body),
                          f"Authorization: {token}\r\n"), body[:1])
    await asyncio.sleep(5.5)  # past the strict deadline: the token vouched for the body
    writer.write(body[1:])
    await writer.drain()
    status, answer = await _status(reader, 5.0)
    writer.close()
    assert status == 200, answer
    assert answer["status"] == "running"


@pytest.fixture
def reading_app() -> Iterator[int]:
    """An app with only the body-deadline middleware (30 s) and two routes that read their
    body: one public, one that vouches for the request first (as the callback does)."""

    @post("/open", status_code=200)
    async def read_open(request: Request[Any, Any, Any]) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @post("/vouched", status_code=200)
    async def read_vouched(request: Request[Any, Any, Any]) -> dict[str, int]:
        vouch(request.scope)
        return {"bytes": len(await request.body())}

    app = Litestar([read_open, read_vouched], exception_handlers=EXCEPTION_HANDLERS,
                   middleware=[DefineMiddleware(body_deadline_middleware, timeout_s=30.0)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off", ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(timeout=20)


async def test_an_unvouched_slow_body_is_cut_at_5_s(reading_app: int) -> None:
    started = time.monotonic()
    reader, writer = await _send_head(reading_app, _post("/open", 1000), b"x")
    status, answer = await _status(reader, 10.0)
    writer.close()
    assert (status, answer["code"]) == (408, "request_timeout")
    assert 4.5 <= time.monotonic() - started < 8


async def test_an_unvouched_body_is_read_to_64_kib_at_most(reading_app: int) -> None:
    size = 200_000
    reader, writer = await _send_head(reading_app, _post("/open", size), b"x" * size)
    status, answer = await _status(reader, 5.0)
    writer.close()
    assert (status, answer["code"]) == (413, "payload_too_large")
    # Up to the limit it is read; a vouched request is read past it.
    for path, length, expected in (("/open", UNVOUCHED_BODY_BYTES, 200),
                                   ("/vouched", size, 200)):
        reader, writer = await _send_head(reading_app, _post(path, length), b"x" * length)
        status, answer = await _status(reader, 5.0)
        writer.close()
        assert (status, answer) == (expected, {"bytes": length})


async def test_a_signed_upload_is_read_past_64_kib(embedded_api: Api) -> None:
    api, size = embedded_api, 200_000
    response = await api.client.post("/jobs", json={"items": items(1, size)},
                                      headers=api.auth(api.user()))
    assert response.status_code == 201, response.text
    upload = response.json()["uploads"][0]
    async with httpx.AsyncClient(timeout=30) as raw:
        stored = await raw.put(upload["url"], headers=upload["headers"], content=b"x" * size)
        assert stored.status_code == 200, stored.text
        # The same URL without its signature is refused before its body is read.
        forged = await raw.put(upload["url"].split("?")[0], content=b"x" * size)
        assert forged.status_code == 403, forged.text


async def test_parallel_puts_to_one_upload_url_are_one_at_a_time(embedded_api: Api) -> None:
    api, size = embedded_api, 200_000
    response = await api.client.post("/jobs", json={"items": items(1, size)},
                                      headers=api.auth(api.user()))
    upload = response.json()["uploads"][0]
    target = upload["url"].split("/files/", 1)[1]
    head = (f"PUT /files/{target} HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in upload["headers"].items()))
    # The first PUT is in flight (half its body sent); a second to the same URL is refused
    # at once, without a temp file of its own.
    reader, writer = await _send_head(_port(api), head, b"x" * (size // 2))
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(timeout=30) as raw:
        second = await raw.put(upload["url"], headers=upload["headers"], content=b"y" * size)
        assert second.status_code == 409, second.text
        assert second.json()["code"] == "upload_in_progress"
        writer.write(b"x" * (size - size // 2))
        await writer.drain()
        status, _ = await _status(reader, 5.0)
        writer.close()
        assert status == 200
        # Once it has ended, the URL takes a PUT again.
        again = await raw.put(upload["url"], headers=upload["headers"], content=b"z" * size)
        assert again.status_code == 200, again.text
