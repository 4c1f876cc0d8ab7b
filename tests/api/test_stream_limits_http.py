"""Open event streams per user (docs/reference.md): at most 10, counted in the user's
bucket across API processes, leased so that a dead process leaks none; a stream on a job
that does not change ends with a retry hint. On fakeredis, Redis and Cluster."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

import httpx

from service.api.live import IDLE_RETRY_MS
from service.api.streams import MAX_STREAMS
from service.state.clients import state_redis
from service.state.keys import KeySpace
from tests.api import served
from tests.api.conftest import Api
from tests.api.flow import create_job
from tests.api.served import Serve

backend, serve = served.backend, served.serve  # the fixtures of this module's tests


async def _open(stack: AsyncExitStack, api: Api, user: str, job_id: str) -> httpx.Response:
    """Opens a stream; an open one has sent its first event already. Its lines are read
    through one iterator kept with the response: dropping an iterator closes the response."""
    response = await stack.enter_async_context(
        api.client.stream("GET", f"/jobs/{job_id}/events", headers=api.auth(user)))
    if response.status_code == 200:
        lines = response.aiter_lines()
        stack.callback(lambda: lines)  # held until the stack closes the response
        assert await anext(lines) == "id: 0"
    return response


async def test_an_eleventh_stream_of_one_user_is_429_across_processes(serve: Serve) -> None:
    # A short idle end, so that a stream a failed run leaves open ends soon.
    first, second = serve(stream_idle=20.0), serve(stream_idle=20.0)
    user, other = first.user(), first.user()
    job = await create_job(first, user, 1)
    async with AsyncExitStack() as stack:
        for n in range(MAX_STREAMS):
            response = await _open(stack, first if n % 2 else second, user, job["id"])
            assert response.status_code == 200
        for api in (first, second):
            refused = await api.client.get(f"/jobs/{job['id']}/events", headers=api.auth(user))
            assert refused.status_code == 429, refused.text
            assert refused.json()["code"] == "too_many_streams"
        other_job = await create_job(first, other, 1)
        async with first.client.stream("GET", f"/jobs/{other_job['id']}/events",
                                       headers=first.auth(other)) as response:
            assert response.status_code == 200
    # Every stream closed by the client gives its slot back.
    deadline = time.monotonic() + 10
    while True:
        async with AsyncExitStack() as stack:
            response = await _open(stack, first, user, job["id"])
            if response.status_code == 200 or time.monotonic() > deadline:
                break
    assert response.status_code == 200


async def test_slots_of_a_dead_process_end_with_their_lease(serve: Serve) -> None:
    api = serve()
    user = api.user()
    job = await create_job(api, user, 1)
    key = KeySpace(api.settings.key_prefix, api.settings.buckets).user(user).streams
    client = state_redis(api.settings)  # a client of the test's own event loop
    try:
        # Ten slots whose leases ended a second ago, as a process that died holding them.
        stale = (int(time.time()) - 1) * 1000
        await client.execute_command("ZADD", key, *[x for n in range(MAX_STREAMS)
                                                    for x in (stale, f"dead-{n}")])
        async with api.client.stream("GET", f"/jobs/{job['id']}/events",
                                     headers=api.auth(user)) as response:
            assert response.status_code == 200
        # Ten live ones (a minute left) do hold the slots.
        await client.execute_command("ZADD", key, *[x for n in range(MAX_STREAMS)
                                                    for x in (stale + 61_000, f"live-{n}")])
        refused = await api.client.get(f"/jobs/{job['id']}/events", headers=api.auth(user))
        assert refused.status_code == 429
    finally:
        await client.aclose()


async def test_a_stream_on_a_job_that_does_not_change_ends_with_a_retry_hint(serve: Serve
                                                                             ) -> None:
    api = serve(stream_idle=1.0)
    user = api.user()
    job = await create_job(api, user, 1)
    started = time.monotonic()
    async with api.client.stream("GET", f"/jobs/{job['id']}/events",
                                 headers=api.auth(user)) as response:
        lines = [line async for line in response.aiter_lines()]
    assert 0.9 <= time.monotonic() - started < 5
    assert f"retry: {IDLE_RETRY_MS}" in lines
    assert lines[0] == "id: 0"
