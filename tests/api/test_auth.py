"""User/admin JWTs through Litestar's JWT middleware, and per-job callback tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar import Litestar, Request, get, post, route
from litestar.testing import AsyncTestClient

from service.api.auth import (
    Principal,
    issue_token,
    make_jwt_auth,
)
from service.contract import callback_token, verify_callback_token
from service.settings import Settings

SECRET = "auth-test-secret-" + "k" * 32


def test_issued_token_carries_subject_expiry_and_role() -> None:
    claims = jwt.decode(issue_token(SECRET, "ann", ttl_s=120), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "ann"
    assert claims["exp"] - claims["iat"] == 120
    assert "role" not in claims
    admin = jwt.decode(issue_token(SECRET, "root", admin=True), SECRET, algorithms=["HS256"])
    assert admin["role"] == "admin"


def test_callback_token_names_the_owner_of_exactly_its_job() -> None:
    token = callback_token(SECRET, "job-1", "ann/with.dots")
    assert verify_callback_token(SECRET, "job-1", token) == "ann/with.dots"
    assert verify_callback_token(SECRET, "job-2", token) is None
    assert verify_callback_token("another secret", "job-1", token) is None
    forged_owner = callback_token(SECRET, "job-1", "bob").split(".")[0]
    assert verify_callback_token(SECRET, "job-1", forged_owner + "." + token.split(".")[1]) is None


@pytest.mark.parametrize("garbage", ["", ".", "abc", "abc.", ".abc", "!!!.###", "a.b.c",
                                     "YW5u.not-a-mac"])
def test_malformed_callback_tokens_are_refused(garbage: str) -> None:
    assert verify_callback_token(SECRET, "job-1", garbage) is None


@get("/me")
async def me(request: Request[Principal, Any, Any]) -> dict[str, Any]:
    return {"user_id": request.user.user_id, "admin": request.user.admin}


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@post("/jobs/{job_id:str}/callback", status_code=200)
async def callback() -> dict[str, str]:
    return {"reached": "yes"}


@get("/jobs/{job_id:str}/callbacks-log")
async def not_the_callback() -> dict[str, str]:
    return {"reached": "yes"}


@route("/me/probe", http_method=["GET", "HEAD"])
async def probe(request: Request[Any, Any, Any]) -> None:
    request.app.state.probed = request.user


def app_with(settings: Settings, secret: str, provisioned: list[str]) -> Litestar:
    async def provision(user_id: str) -> None:
        provisioned.append(user_id)

    auth = make_jwt_auth(settings, secret, provision)
    return Litestar([me, health, callback, not_the_callback, probe],
                    on_app_init=[auth.on_app_init])


@pytest.fixture
async def client() -> AsyncIterator[tuple[AsyncTestClient[Litestar], list[str]]]:
    provisioned: list[str] = []
    async with AsyncTestClient(app=app_with(Settings(), SECRET, provisioned)) as test_client:
        yield test_client, provisioned


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_valid_token_reaches_the_route_and_provisions_the_user(
    client: tuple[AsyncTestClient[Litestar], list[str]],
) -> None:
    http, provisioned = client
    response = await http.get("/me", headers=bearer(issue_token(SECRET, "ann")))
    assert response.json() == {"user_id": "ann", "admin": False}
    response = await http.get("/me", headers=bearer(issue_token(SECRET, "root", admin=True)))
    assert response.json() == {"user_id": "root", "admin": True}
    assert provisioned == ["ann", "root"]


async def test_missing_forged_or_expired_tokens_are_401(
    client: tuple[AsyncTestClient[Litestar], list[str]],
) -> None:
    http, provisioned = client
    expired = jwt.encode({"sub": "ann", "exp": 1_000_000, "iat": 999_000}, SECRET, "HS256")
    no_expiry = jwt.encode({"sub": "ann"}, SECRET, "HS256")
    for headers in ({}, bearer("not.a.jwt"), bearer(issue_token("wrong-secret-" + "w" * 32, "ann")),
                    bearer(expired), bearer(no_expiry)):
        assert (await http.get("/me", headers=headers)).status_code == 401
    assert provisioned == []


async def test_a_head_request_needs_a_token_like_a_get(
    client: tuple[AsyncTestClient[Litestar], list[str]],
) -> None:
    # Litestar's auth middleware skips HEAD and OPTIONS by default: a HEAD on a user route
    # would reach its handler with no user. Only OPTIONS (no handler of ours) is skipped.
    http, provisioned = client
    for method in ("GET", "HEAD"):
        answer = await http.request(method, "/me/probe")
        assert answer.status_code == 401, method
        assert not hasattr(http.app.state, "probed")
    answer = await http.head("/me/probe", headers=bearer(issue_token(SECRET, "ann")))
    assert answer.status_code == 200
    assert http.app.state.probed == Principal(user_id="ann", admin=False)
    assert provisioned == ["ann"]


async def test_public_paths_need_no_token_and_lookalikes_still_do(
    client: tuple[AsyncTestClient[Litestar], list[str]],
) -> None:
    http, _ = client
    assert (await http.get("/health")).status_code == 200
    assert (await http.post("/jobs/j1/callback")).status_code == 200
    assert (await http.get("/jobs/j1/callbacks-log")).status_code == 401


async def test_rs256_tokens_verify_with_the_configured_public_key() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    token = jwt.encode({"sub": "ann", "exp": 4_000_000_000, "iat": 1_700_000_000,
                        "role": "admin"}, private, algorithm="RS256")
    provisioned: list[str] = []
    app = app_with(Settings(jwt_public_key=public_pem), SECRET, provisioned)
    async with AsyncTestClient(app=app) as http:
        response = await http.get("/me", headers=bearer(token))
        assert response.json() == {"user_id": "ann", "admin": True}
        hs256 = await http.get("/me", headers=bearer(issue_token(SECRET, "ann")))
        assert hs256.status_code == 401  # an RS256 deployment refuses HS256 tokens
