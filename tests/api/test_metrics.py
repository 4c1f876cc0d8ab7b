"""The request metrics middleware: grouped paths, status codes, errors, requests in flight."""

from __future__ import annotations

from litestar import Litestar, get
from litestar.params import FromPath
from litestar.plugins.prometheus import PrometheusController
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from service.api.metrics import metrics_middleware


@get("/things/{thing_id:str}", sync_to_thread=False)
def thing(thing_id: FromPath[str]) -> dict[str, str]:
    if thing_id == "boom":
        raise RuntimeError("a bug")
    return {"id": thing_id}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"app_name": "tollgate", **labels}) or 0.0


async def test_requests_are_counted_by_route_template_status_and_error() -> None:
    app = Litestar([thing, PrometheusController], middleware=[metrics_middleware])
    path = {"method": "GET", "path": "/things/{thing_id}"}
    ok = {**path, "status_code": "200"}
    failed = {**path, "status_code": "500"}
    before = (sample("tollgate_requests_total", **ok),
              sample("tollgate_requests_total", **failed),
              sample("tollgate_requests_error_total", **failed),
              sample("tollgate_request_duration_seconds_count", **ok))
    async with AsyncTestClient(app) as client:
        for name in ("a", "b", "boom"):
            await client.get(f"/things/{name}")
        text = (await client.get("/metrics")).text
    after = (sample("tollgate_requests_total", **ok),
             sample("tollgate_requests_total", **failed),
             sample("tollgate_requests_error_total", **failed),
             sample("tollgate_request_duration_seconds_count", **ok))
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1, 2]
    assert sample("tollgate_requests_in_progress", **path) == 0
    assert 'path="/things/{thing_id}"' in text and "/things/a" not in text
    assert 'path="/metrics"' not in text  # scrapes are not counted
