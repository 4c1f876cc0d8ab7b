"""A job the client made but could not go on with is canceled before the error is raised,
and the error names it (issue 18, item 4): an upload refused with 403 bad_signature (the
API handed out URLs of another server) used to keep the free plan's only concurrency slot,
so the next create was 429, and nothing said which job to cancel. Over HTTP, both clients."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from service.client import AsyncTollgate, ProblemError, Tollgate, UploadsMissing
from tests.api.conftest import Api

FILES = [("a.txt", b"hello", "text/plain"), ("b.txt", b"world", "text/plain")]
Tamper = Callable[[httpx.Request], httpx.Response | None]


def forge_signature(request: httpx.Request) -> None:
    """An upload signed by another server: the real one answers 403 bad_signature."""
    if request.method == "PUT" and request.url.path.startswith("/files/"):
        request.url = request.url.copy_set_param("sig", "0" * 64)


def drop_upload(request: httpx.Request) -> httpx.Response | None:
    """An upload that never reaches the server, though the client hears 200."""
    if request.method == "PUT" and request.url.path.startswith("/files/"):
        return httpx.Response(200)
    return None


def forging(request: httpx.Request) -> httpx.Response | None:
    forge_signature(request)
    return None


class AsyncTampering(httpx.AsyncHTTPTransport):
    def __init__(self, tamper: Tamper) -> None:
        super().__init__()
        self.tamper = tamper

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return self.tamper(request) or await super().handle_async_request(request)


class Tampering(httpx.HTTPTransport):
    def __init__(self, tamper: Tamper) -> None:
        super().__init__()
        self.tamper = tamper

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.tamper(request) or super().handle_request(request)


async def call(kind: str, api: Api, user: str, tamper: Tamper, name: str, *args: Any) -> Any:
    """`name(*args)` on the sync or the async client, its requests passed through `tamper`."""
    if kind == "async":
        async with AsyncTollgate(api.url, api.token(user),
                                 transport=AsyncTampering(tamper)) as tg:
            return await getattr(tg, name)(*args)
    with Tollgate(api.url, api.token(user), transport=Tampering(tamper)) as tg:
        return await asyncio.to_thread(getattr(tg, name), *args)


async def assert_slot_and_credits_free(api: Api, user: str, job_id: str) -> None:
    job = (await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))).json()
    assert job["status"] == "canceled", job
    me = (await api.client.get("/me", headers=api.auth(user))).json()
    assert me["credits"]["available"] == 10  # the signup credits, whole again
    # The free plan runs one job at a time: the canceled one no longer counts.
    async with AsyncTollgate(api.url, api.token(user)) as tg:
        assert (await tg.create(FILES)).status == "created"


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("step", ["create", "run"])
async def test_a_refused_upload_cancels_the_job_and_names_it(embedded_api: Api, kind: str,
                                                             step: str) -> None:
    api, user = embedded_api, embedded_api.user()
    with pytest.raises(ProblemError) as refused:
        await call(kind, api, user, forging, step, FILES)
    assert (refused.value.status, refused.value.code) == (403, "bad_signature")
    job_id = refused.value.job_id
    assert job_id is not None
    await assert_slot_and_credits_free(api, user, job_id)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_run_cancels_its_job_when_confirm_is_refused(embedded_api: Api,
                                                           kind: str) -> None:
    api, user = embedded_api, embedded_api.user()
    with pytest.raises(UploadsMissing) as refused:
        await call(kind, api, user, drop_upload, "run", FILES)
    assert refused.value.missing == [0, 1] and refused.value.job_id is not None
    await assert_slot_and_credits_free(api, user, refused.value.job_id)


async def test_create_names_no_job_when_the_api_refuses_to_make_one(embedded_api: Api
                                                                    ) -> None:
    api, user = embedded_api, embedded_api.user()
    with pytest.raises(ProblemError) as refused:
        await call("async", api, user, forging, "create",
                   [(f"{n}.txt", b"x") for n in range(11)])  # 10 signup credits
    assert refused.value.code == "insufficient_credits" and refused.value.job_id is None
