"""One client may not hold every request slot: requests in flight per client are capped
(429 too_many_in_flight), and granian gets connection slots far past any one client's cap."""

from __future__ import annotations

import asyncio
import resource
from typing import Any, cast

import httpx
import pytest
from litestar import Litestar, get
from litestar.middleware import DefineMiddleware
from litestar.types import Scope

from service.api import client_cap
from service.api.client_cap import client_cap_middleware, client_key
from service.cli.serve import FILES_KEPT, connection_slots, granian_options
from service.settings import Settings


@pytest.mark.parametrize(("host", "key"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("fe80::1%eth0", "fe80::/64"),
])
def test_a_client_is_its_address_or_its_ipv6_64(host: str, key: str) -> None:
    scope = cast(Scope, {"type": "http", "client": (host, 5555)})
    assert client_key(scope) == key


def _app(release: asyncio.Event, cap: int) -> Litestar:
    @get("/slow")
    async def slow() -> dict[str, bool]:
        await release.wait()
        return {"ok": True}

    return Litestar([slow], middleware=[DefineMiddleware(client_cap_middleware,
                                                         max_in_flight=cap)])


async def _get(app: Litestar, host: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=cast(Any, app), client=(host, 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return await http.get("/slow")


async def test_a_client_past_its_cap_is_refused_and_others_are_served(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_cap, "REFUSAL_PAUSE_S", 0.0)
    release = asyncio.Event()
    app = _app(release, cap=3)
    held = [asyncio.create_task(_get(app, "198.51.100.1")) for _ in range(3)]
    await asyncio.sleep(0.05)
    refused = await asyncio.wait_for(_get(app, "198.51.100.1"), 5)
    assert refused.status_code == 429
    assert refused.json()["code"] == "too_many_in_flight"
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["connection"] == "close"
    assert refused.headers["content-type"] == "application/problem+json"
    other = asyncio.create_task(_get(app, "198.51.100.2"))  # another client: not counted
    await asyncio.sleep(0.05)
    assert not other.done()  # waiting on the handler, not refused
    release.set()
    assert [r.status_code for r in await asyncio.gather(*held, other)] == [200] * 4
    # The slots came back: the first client is served again.
    assert (await _get(app, "198.51.100.1")).status_code == 200


async def test_a_refusal_comes_after_a_pause() -> None:
    release = asyncio.Event()
    app = _app(release, cap=1)
    held = asyncio.create_task(_get(app, "198.51.100.1"))
    await asyncio.sleep(0.05)
    began = asyncio.get_running_loop().time()
    assert (await _get(app, "198.51.100.1")).status_code == 429
    assert asyncio.get_running_loop().time() - began >= client_cap.REFUSAL_PAUSE_S * 0.9
    release.set()
    await held


async def test_a_cap_of_0_is_no_cap() -> None:
    release = asyncio.Event()
    app = _app(release, cap=0)
    calls: list[asyncio.Task[Any]] = [asyncio.create_task(_get(app, "198.51.100.1"))
                                      for _ in range(20)]
    await asyncio.sleep(0.05)
    release.set()
    assert {r.status_code for r in await asyncio.gather(*calls)} == {200}


def test_granian_gets_the_connection_slots_the_open_file_limit_allows() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        assert connection_slots(100) == 100
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        wanted = 1024 if hard == resource.RLIM_INFINITY else min(hard, 4096)
        slots = connection_slots(wanted)
        # The soft limit went up to hold them, as far as the hard limit lets it.
        assert slots == min(wanted, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FILES_KEPT)
        assert slots > 1024 - FILES_KEPT or hard <= 1024
        options = granian_options(Settings(jwt_secret="x" * 32, max_connections=64))
        assert options["backpressure"] == 64
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
