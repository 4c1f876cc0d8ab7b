"""service.client against the real API over HTTP: the whole flow sync and async, refusals as
typed exceptions, the cursor iterator, live events, and webhook signatures."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from service.client import (
    AsyncTollgate,
    InsufficientCredits,
    InvalidTransition,
    NotFound,
    ProblemError,
    Tollgate,
    Unauthorized,
    UploadsMissing,
    WebhookVerificationError,
    verify_webhook,
)
from service.client.sse import EventParser
from service.jobs.webhooks import new_secret, sign
from tests.api.conftest import Api
from tests.api.flow import create_job, report_item


def png(path: Path, color: tuple[int, int, int]) -> Path:
    Image.new("RGB", (32, 24), color).save(path)
    return path


async def finish_when_queued(api: Api, user: str, job_id: str, outcomes: list[bool]) -> None:
    """Plays the worker: reports every item once the job is queued."""
    for _ in range(200):
        status = (await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))).json()
        if status["status"] == "queued":
            break
        await asyncio.sleep(0.05)
    for index, ok in enumerate(outcomes):
        await report_item(api, job_id, user, index, ok=ok)


async def test_the_sync_client_runs_a_job_of_real_files(embedded_api: Api, tmp_path: Path
                                                        ) -> None:
    api, user = embedded_api, embedded_api.user()
    files = [png(tmp_path / "red.png", (255, 0, 0)), png(tmp_path / "blue.png", (0, 0, 255))]
    with Tollgate(api.url, api.token(user)) as tg:
        job = await asyncio.to_thread(tg.create, files)
        assert job.status == "created" and job.total_items == 2 and len(job.uploads) == 2
        assert (await asyncio.to_thread(tg.confirm, job.id)).status == "uploaded"
        assert (await asyncio.to_thread(tg.execute, job.id)).status == "queued"
        worker = asyncio.create_task(finish_when_queued(api, user, job.id, [True, False]))
        done = await asyncio.to_thread(tg.wait, job.id, timeout=30, initial_delay=0.05)
        await worker
    assert done.status == "done" and done.finished
    assert (done.done_items, done.failed_items, done.charged) == (1, 1, 1)
    assert done.items[0].status == "ok" and done.items[0].result_url
    assert done.items[1].status == "failed"


async def test_the_async_client_runs_uploads_and_cancels(embedded_api: Api) -> None:
    api, user = embedded_api, embedded_api.user()
    async with AsyncTollgate(api.url, api.token(user)) as tg:
        job = await tg.create([("a.txt", b"hello", "text/plain"), ("b.bin", b"\x00" * 10)])
        assert [u.index for u in job.uploads] == [0, 1]
        assert (await tg.confirm(job.id)).status == "uploaded"
        canceled = await tg.cancel(job.id)
        assert canceled.status == "canceled" and canceled.refunded == 2
        assert (await tg.get(job.id)).status == "canceled"
        me = await tg.me()
        assert me["credits"]["available"] == 10


async def test_refusals_are_typed_exceptions_with_their_code(embedded_api: Api) -> None:
    api, user = embedded_api, embedded_api.user()
    async with AsyncTollgate(api.url, api.token(user)) as tg:
        with pytest.raises(NotFound) as missing:
            await tg.get("01m8aaaaaaaaaaaaaaaaaaaaaa-1")
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        with pytest.raises(InsufficientCredits) as poor:
            await tg.create([(f"{n}.txt", b"x") for n in range(11)])  # 10 signup credits
        assert poor.value.status == 402 and poor.value.code == "insufficient_credits"
        created = await create_job(api, user, 2)  # nothing uploaded
        with pytest.raises(UploadsMissing) as not_uploaded:
            await tg.confirm(created["id"])
        assert not_uploaded.value.missing == [0, 1]
        with pytest.raises(InvalidTransition) as early:
            await tg.execute(created["id"])
        assert early.value.code == "invalid_transition" and early.value.status == 409
    async with AsyncTollgate(api.url, "not-a-token") as stranger:
        with pytest.raises(Unauthorized) as refused:
            await stranger.me()
        assert isinstance(refused.value, ProblemError) and refused.value.status == 401


async def test_list_walks_every_page_by_cursor(embedded_api: Api) -> None:
    api, user = embedded_api, embedded_api.user()
    await api.admin_create_user(user, plan="pro", credits=100)
    async with AsyncTollgate(api.url, api.token(user)) as tg:
        made = []
        for n in range(7):
            job = await tg.create([(f"{n}.txt", b"x")])
            made.append((await tg.cancel(job.id)).id)
        seen = [job.id async for job in tg.list(limit=3)]
        canceled = [job.id async for job in tg.list(limit=2, status="canceled")]
        first = await tg.page(limit=3)
    assert seen == list(reversed(made)) and canceled == seen
    assert first.next_cursor and len(first.items) == 3
    with Tollgate(api.url, api.token(user)) as sync:
        assert [job.id for job in await asyncio.to_thread(lambda: list(sync.list(limit=4)))] \
            == seen


async def test_events_follow_a_job_to_its_end(embedded_api: Api) -> None:
    api, user = embedded_api, embedded_api.user()
    async with AsyncTollgate(api.url, api.token(user)) as tg:
        job = await tg.create([("a.txt", b"a"), ("b.txt", b"b")])
        await tg.confirm(job.id)
        await tg.execute(job.id)
        worker = asyncio.create_task(finish_when_queued(api, user, job.id, [True, True]))
        seen = [event async for event in tg.events(job.id)]
        await worker
    assert seen[0].job.status == "queued" and seen[-1].job.status == "done"
    assert [e.job.done_items for e in seen] == sorted(e.job.done_items for e in seen)
    assert all(event.id for event in seen)
    with Tollgate(api.url, api.token(user)) as sync:
        replay = await asyncio.to_thread(lambda: list(sync.events(job.id)))
        assert replay[-1].job.status == "done"
        with pytest.raises(NotFound):
            await asyncio.to_thread(lambda: list(sync.events("01m8aaaaaaaaaaaaaaaaaaaaaa-1")))


def test_the_event_parser_follows_the_sse_format() -> None:
    parser = EventParser()
    lines = [": keep-alive", "event: job", "id: 7", 'data: {"a":', "data: 1}", "",
             "", "data: plain", ""]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert [(e.event, e.id, e.data) for e in events] == [
        ("job", "7", '{"a":\n1}'), ("message", "7", "plain")]


def test_webhook_signatures_from_the_server_verify_and_tampering_does_not() -> None:
    secret = new_secret()
    body = json.dumps({"type": "job.completed", "data": {"id": "j1"}}).encode()
    now = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now),
               "webhook-signature": sign(secret, "msg_1", now, body)}
    assert verify_webhook(secret, headers, body)["type"] == "job.completed"
    rotated = {**headers, "Webhook-Signature": "v1,AAAA " + headers["webhook-signature"]}
    del rotated["webhook-signature"]
    assert verify_webhook(secret, rotated, body)["data"] == {"id": "j1"}
    for bad_headers, bad_body in [
        (headers, body + b" "),
        ({**headers, "webhook-id": "msg_2"}, body),
        ({**headers, "webhook-timestamp": str(now - 301)}, body),
        ({k: v for k, v in headers.items() if k != "webhook-signature"}, body),
    ]:
        with pytest.raises(WebhookVerificationError):
            verify_webhook(secret, bad_headers, bad_body)
    other = "whsec_" + base64.b64encode(b"k" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        verify_webhook(other, headers, body)


def test_the_client_loads_nothing_else_of_service() -> None:
    code = ("import sys, service.client; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'workers')))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True,
                                       capture_output=True, text=True).stdout.replace("'", '"'))
    assert loaded and all(m == "service" or m.startswith("service.client") for m in loaded)



async def test_uploads_go_to_presigned_s3_urls_on_the_real_services(api: Api,
                                                                    tmp_path: Path) -> None:
    user = api.user()
    files = [png(tmp_path / "red.png", (255, 0, 0)), png(tmp_path / "green.png", (0, 255, 0))]
    async with AsyncTollgate(api.url, api.token(user)) as tg:
        job = await tg.create(files, idempotency_key="order-1")
        assert all(upload.url.startswith(api.settings.s3_endpoint or "") for upload in job.uploads)
        assert (await tg.confirm(job.id)).status == "uploaded"  # every object is in S3
        again = await tg.create(files, idempotency_key="order-1")
        assert again.id == job.id and again.idempotent_replay
