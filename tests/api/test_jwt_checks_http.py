"""User tokens (issue 23, low finding): `aud` is checked when TOLLGATE_JWT_AUDIENCE is set,
and only the Bearer scheme carries a token (`Basic <jwt>` is 401)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from tests.api import served
from tests.api.conftest import SECRET
from tests.api.served import Serve

backend, serve = served.backend, served.serve  # the fixtures of this module's tests
pytestmark = pytest.mark.parametrize("backend", ["fakeredis"], indirect=True)


def _token(user: str, **claims: Any) -> str:
    now = datetime.now(UTC)
    return jwt.encode({"sub": user, "iat": now, "exp": now + timedelta(hours=1), **claims},
                      SECRET, algorithm="HS256")


async def test_the_audience_is_checked_when_it_is_set(serve: Serve) -> None:
    api = serve(jwt_audience="tollgate-api", rate_limits_enabled=False)
    user = api.user()

    async def status(token: str) -> int:
        response = await api.client.get("/me", headers={"Authorization": f"Bearer {token}"})
        return response.status_code

    assert await status(_token(user, aud="tollgate-api")) == 200
    assert await status(_token(user, aud=["other", "tollgate-api"])) == 200
    assert await status(_token(user, aud="another-api")) == 401
    assert await status(_token(user)) == 401  # no aud at all
    # Without the setting, aud is not required.
    plain = serve(rate_limits_enabled=False)
    response = await plain.client.get("/me", headers={"Authorization": f"Bearer {_token(user)}"})
    assert response.status_code == 200


async def test_only_the_bearer_scheme_carries_a_token(serve: Serve) -> None:
    api = serve(rate_limits_enabled=False)
    token = _token(api.user())
    for header, expected in ((f"Bearer {token}", 200), (f"bearer {token}", 200),
                             (f"Basic {token}", 401), (f"Token {token}", 401), (token, 401),
                             ("Bearer", 401)):
        response = await api.client.get("/me", headers={"Authorization": header})
        assert response.status_code == expected, header
        if expected == 401:
            assert response.json()["code"] == "unauthorized"
