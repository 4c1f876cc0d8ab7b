"""GET /metrics: for TOLLGATE_METRICS_TOKEN or loopback clients only, and its business metrics
a snapshot at most 5 s old that concurrent scrapes share (one Redis read). On the embedded
back end (fakeredis) and on real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

import service.api.business_metrics as business_metrics
from service.api.app import create_app
from service.settings import Settings
from service.state.stats import business_totals
from tests.api.conftest import Api

TOKEN = "metrics-" + "t" * 32
OUTSIDE = ("203.0.113.7", 41000)  # a documentation address: not loopback


@pytest.fixture(params=["embedded_api", "api"])
def served(request: pytest.FixtureRequest) -> Api:
    api: Api = request.getfixturevalue(request.param)
    return api


@asynccontextmanager
async def client_at(settings: Settings, address: tuple[str, int]
                    ) -> AsyncIterator[httpx.AsyncClient]:
    """The app on `settings`, its lifespan run, asked by a client at `address` (the ASGI
    scope's client, which is what a server puts there)."""
    app = create_app(settings)
    async with app.lifespan():  # the Runtime, on this test's event loop
        transport = httpx.ASGITransport(app=app, client=address)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://tollgate") as client:
            yield client


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code
    assert "tollgate_requests_total" not in response.text


async def test_without_a_token_only_loopback_clients_are_served(served: Api) -> None:
    assert served.settings.metrics_token is None
    over_http = await served.client.get("/metrics")  # uvicorn on 127.0.0.1
    assert over_http.status_code == 200 and "tollgate_flush_lag_seconds" in over_http.text
    async with client_at(served.settings, OUTSIDE) as outside:
        assert_problem(await outside.get("/metrics"), 403, "forbidden")
        assert_problem(await outside.get("/metrics", headers={"Authorization": "Bearer x"}),
                       403, "forbidden")
        assert (await outside.head("/metrics")).status_code == 403
    for loopback in (("127.0.0.1", 41000), ("::1", 41000)):
        async with client_at(served.settings, loopback) as inside:
            assert (await inside.get("/metrics")).status_code == 200


async def test_with_a_token_only_its_bearer_is_served(served: Api) -> None:
    settings = served.settings.model_copy(update={"metrics_token": TOKEN})
    async with client_at(settings, OUTSIDE) as outside:
        assert_problem(await outside.get("/metrics"), 401, "unauthorized")
        for wrong in (f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}", TOKEN,
                      f"Bearer {TOKEN[:-1]}"):
            assert_problem(await outside.get("/metrics", headers={"Authorization": wrong}),
                           401, "unauthorized")
        served_ = await outside.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert served_.status_code == 200, served_.text
        assert "tollgate_flush_lag_seconds" in served_.text
        assert "tollgate_requests_total" in served_.text
    async with client_at(settings, ("127.0.0.1", 41000)) as inside:  # loopback needs it too
        assert_problem(await inside.get("/metrics"), 401, "unauthorized")


async def test_concurrent_scrapes_share_one_read_and_a_later_one_reads_again(
        served: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(business_metrics, "SNAPSHOT_TTL_S", 5.0)
    now = [1000.0]
    monkeypatch.setattr(business_metrics, "_clock", lambda: now[0])
    reads: list[int] = []
    read = business_totals

    async def counted(core: Any) -> Any:
        reads.append(1)
        await asyncio.sleep(0.2)  # a slow read: every scrape below arrives during it
        return await read(core)

    monkeypatch.setattr(business_metrics, "business_totals", counted)
    user = served.user()
    await served.admin_create_user(user, credits=10)  # a bucket in use, with counters
    scrapes = await asyncio.gather(*(served.client.get("/metrics") for _ in range(20)))
    assert [s.status_code for s in scrapes] == [200] * 20
    assert len(reads) == 1
    assert len({s.text.split("# HELP tollgate_flush_failures_total")[1] for s in scrapes}) == 1
    granted = 'tollgate_credits_total{kind="granted"} '
    assert float(scrapes[0].text.split(granted)[1].split()[0]) >= 10

    now[0] += 4.0  # still fresh
    assert (await served.client.get("/metrics")).status_code == 200
    assert len(reads) == 1
    await served.admin_create_user(served.user(), credits=5)  # moves the counters
    now[0] += 2.0  # 6 s after the read: a new one
    later = await served.client.get("/metrics")
    assert later.status_code == 200 and len(reads) == 2
    assert float(later.text.split(granted)[1].split()[0]) == \
        float(scrapes[0].text.split(granted)[1].split()[0]) + 5
    # The request metrics stay live: the 22 scrapes' GETs are not counted, but the grants are.
    assert later.text.count("tollgate_requests_total{") > 0
