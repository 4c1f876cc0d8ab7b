"""Request rate limits (docs/reference.md) over HTTP, on the three Redis back ends."""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import pytest

from service.api.ratelimit import BadRateLimits, load_rate_limits
from service.settings import Settings
from tests.api import served
from tests.api.conftest import Api
from tests.api.served import Serve

backend, serve = served.backend, served.serve  # the fixtures of this module's tests

async def _write(api: Api, user: str) -> httpx.Response:
    # A write on a user route that changes nothing: it is counted before the handler runs.
    return await api.client.post("/jobs/nothing-here/cancel", headers=api.auth(user))


def _fields(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers.get(name, "")
            for name in ("retry-after", "ratelimit-policy", "ratelimit")}


async def test_the_61st_write_in_a_minute_from_a_free_user_is_429(serve: Serve) -> None:
    api = serve()
    user, other = api.user(), api.user()
    started = time.monotonic()
    for n in range(60):
        response = await _write(api, user)
        assert response.status_code == 404, response.text
        assert response.headers["ratelimit-policy"] == '"write";q=60;w=60'
        remaining = int(response.headers["ratelimit"].split(";")[1].removeprefix("r="))
        # One request frees every second: on a slow machine the quota refills meanwhile.
        refilled = math.ceil(time.monotonic() - started)
        assert 59 - n <= remaining <= min(59, 59 - n + refilled), response.headers
    passed_late = 0
    while (refused := await _write(api, user)).status_code == 404:
        passed_late += 1  # freed while the 60 were sent
        assert passed_late <= math.ceil(time.monotonic() - started)
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "too_many_requests"
    fields = _fields(refused)
    assert fields["retry-after"] == "1"  # one request frees every 60/60 s
    assert fields["ratelimit-policy"] == '"write";q=60;w=60'
    assert fields["ratelimit"] == '"write";r=0;t=1'
    # Reads are a class of their own, and another user has a quota of its own.
    me = await api.client.get("/me", headers=api.auth(user))
    assert me.status_code == 200, me.text
    assert me.headers["ratelimit-policy"] == '"read";q=600;w=60'
    assert (await _write(api, other)).status_code == 404


async def test_two_api_processes_share_one_count(serve: Serve) -> None:
    first, second = serve(), serve()
    user = first.user()
    started = time.monotonic()
    passed = 0
    while (await _write(first if passed % 2 else second, user)).status_code == 404:
        passed += 1
        # One quota of 60 for both, plus one a second freed meanwhile (a slow machine).
        assert passed <= 60 + math.ceil(time.monotonic() - started)
    assert passed >= 60  # and not 120: the two processes took from one count


async def test_limits_follow_the_plan_and_the_limits_file(serve: Serve, tmp_path: Path
                                                          ) -> None:
    limits = tmp_path / "limits.toml"
    limits.write_text("[free]\nwrite = 2\nread = 3\n\n[pro]\nwrite = 4\n")
    api = serve(rate_limits=str(limits))
    free, pro = api.user(), api.user()
    await api.admin_create_user(pro, plan="pro")
    # Admin routes are not counted: more admin writes than any quota here.
    for _ in range(5):
        await api.admin_create_user(api.user())
    assert [(await _write(api, free)).status_code for _ in range(3)] == [404, 404, 429]
    answers = [await _write(api, pro) for _ in range(5)]
    assert [r.status_code for r in answers] == [404, 404, 404, 404, 429]
    assert answers[0].headers["ratelimit-policy"] == '"write";q=4;w=60'
    reads = [(await api.client.get("/me", headers=api.auth(free))).status_code
             for _ in range(4)]
    assert reads == [200, 200, 200, 429]
    # Public paths carry no user and are never counted.
    assert all([(await api.client.get("/health")).status_code == 200 for _ in range(5)])


@pytest.mark.parametrize("text", ["[gold]\nwrite = 1\n", "[free]\nwrite = 0\n",
                                  "[free]\nwrite = 1.5\n", "[free]\nwrite = true\n",
                                  "[free]\nsearch = 3\n", "free = 3\n", "[free\n"])
def test_a_bad_limits_file_stops_the_start(tmp_path: Path, text: str) -> None:
    path = tmp_path / "limits.toml"
    path.write_text(text)
    with pytest.raises(BadRateLimits):
        load_rate_limits(str(path))


def test_limits_are_on_by_default() -> None:
    assert Settings.model_fields["rate_limits_enabled"].default is True
    assert load_rate_limits(None).by_plan == {"free": {"write": 60, "read": 600},
                                              "pro": {"write": 600, "read": 6000}}
