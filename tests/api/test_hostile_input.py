"""Hostile input at every boundary (issue 10): a 4xx problem with a code, never a 500, a
stall or a write to someone else's keys.

The app runs in-process on the shared Redis (a key prefix of its own per test) and on
PostgreSQL (which, unlike SQLite, refuses NUL bytes and over-long varchars), with the
local-folder storage.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from service.api.app import create_app
from service.api.auth import issue_token
from service.contract import clean_error
from service.history.engine import run_migrations
from service.settings import Settings
from service.state.keys import KeySpace
from service.state.plans import PLANS
from service.state.store import Core
from tests.conftest import free_port

SECRET = "hostile-secret-" + "x" * 32
JOB = {"items": [{"name": "a.png", "content_type": "image/png", "size": 10}]}
Client = AsyncTestClient[Litestar]


@pytest.fixture(scope="module")
def database(postgres_admin_dsn: str) -> Iterator[str]:
    """One PostgreSQL database for the module (each test has its own users and Redis keys)."""
    import psycopg

    name = f"tollgate_hostile_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{postgres_admin_dsn.rsplit('/', 1)[0]}/{name}"
    run_migrations(url)
    yield url
    with psycopg.connect(postgres_admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_for(redis_url: str, database_url: str, key_prefix: str, tmp_path: Path,
                 **overrides: Any) -> Settings:
    return Settings(redis_url=redis_url, queue_redis_url=redis_url, database_url=database_url,
                    jwt_secret=SECRET, key_prefix=key_prefix, queue_name=key_prefix,
                    storage_dir=str(tmp_path / "files"), **overrides)


@pytest.fixture
async def client(redis_url: str, database: str, key_prefix: str, tmp_path: Path,
                 real_redis: Any) -> AsyncIterator[Client]:
    app = create_app(settings_for(redis_url, database, key_prefix, tmp_path))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


def auth(user_id: str, *, admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, user_id, admin=admin)}"}


def signed(claims: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def assert_problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code, response.text


def cursor_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --- user ids ------------------------------------------------------------------------------

async def test_a_token_sub_over_128_characters_is_401(client: Client) -> None:
    assert_problem(await client.get("/me", headers=auth("a" * 250)), 401, "unauthorized")


async def test_a_token_sub_with_a_nul_is_401(client: Client) -> None:
    assert_problem(await client.get("/me", headers=auth("ann\x00")), 401, "unauthorized")


async def test_a_token_sub_that_would_name_another_users_keys_is_401(client: Client) -> None:
    victim = user()
    assert (await client.get("/me", headers=auth(victim))).status_code == 200
    assert_problem(await client.get("/me", headers=auth(f"{victim}:jobs")), 401, "unauthorized")
    assert_problem(await client.get("/me", headers=auth(f"{victim}{{1}}")), 401, "unauthorized")
    edge = "Aa0._@|+-" + "z" * 119  # the whole charset, 128 characters: fine
    response = await client.get("/me", headers=auth(edge))
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == edge


async def test_the_admin_cannot_create_a_user_whose_id_holds_a_colon(client: Client) -> None:
    victim = f"victim{uuid.uuid4().hex[:6]}"
    admin = auth("root", admin=True)
    created = await client.post("/admin/users", json={"id": victim, "credits": 5}, headers=admin)
    assert created.status_code == 201, created.text
    colliding = await client.post("/admin/users", json={"id": f"{victim}:jobs"}, headers=admin)
    assert_problem(colliding, 422, "validation_error")
    # The victim still works: its next job reserves normally.
    assert (await client.post("/jobs", json=JOB, headers=auth(victim))).status_code == 201


async def test_an_admin_path_id_outside_the_charset_is_422(client: Client) -> None:
    admin = auth("root", admin=True)
    for bad in ("a:b", "a%7Bb%7D", "a" * 129):
        response = await client.patch(f"/admin/users/{bad}", json={"plan": "pro"}, headers=admin)
        assert_problem(response, 422, "validation_error")
        response = await client.post(f"/admin/users/{bad}/credits", json={
            "amount": 1, "reason": "x"}, headers={**admin, "Idempotency-Key": "k"})
        assert_problem(response, 422, "validation_error")


async def test_options_on_the_admin_routes_is_not_a_500(client: Client) -> None:
    # Found by the fuzzer: the admin guard read a user Litestar's OPTIONS answer never has.
    for path in ("/admin/users", "/admin/users/ann", "/admin/users/ann/credits"):
        response = await client.options(path, headers=auth("root", admin=True))
        assert response.status_code == 204, response.text
        assert "POST" in response.headers["allow"] or "PATCH" in response.headers["allow"]


async def test_a_405_names_the_allowed_methods(client: Client) -> None:
    response = await client.request("TRACE", "/me", headers=auth(user()))
    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


# --- Idempotency-Key -----------------------------------------------------------------------

async def test_an_idempotency_key_over_200_characters_is_422(client: Client) -> None:
    response = await client.post("/jobs", json=JOB, headers={
        **auth(user()), "Idempotency-Key": "k" * 201})
    assert_problem(response, 422, "validation_error")


async def test_an_idempotency_key_that_is_not_printable_ascii_is_422(client: Client) -> None:
    for bad in (b"caf\xc3\xa9", b"tab\there", b""):
        headers = [(name.encode(), value.encode()) for name, value in auth(user()).items()]
        response = await client.post("/jobs", json=JOB,
                                     headers=[*headers, (b"Idempotency-Key", bad)])
        assert_problem(response, 422, "validation_error")


async def test_an_idempotency_key_is_stored_hashed_in_key_names(
    client: Client, real_redis: Any, key_prefix: str
) -> None:
    key = "K" * 200  # the longest allowed
    uid = user()
    first = await client.post("/jobs", json=JOB, headers={**auth(uid), "Idempotency-Key": key})
    assert first.status_code == 201, first.text
    again = await client.post("/jobs", json=JOB, headers={**auth(uid), "Idempotency-Key": key})
    assert again.json()["id"] == first.json()["id"]
    names = [name async for name in real_redis.scan_iter(match=f"{key_prefix}:*")]
    idempotency = [name for name in names if ":idem:" in name]
    assert len(idempotency) == 1
    assert key not in idempotency[0]
    assert len(idempotency[0].rsplit(":", 1)[1]) == 64  # sha256, hex


# --- stored text ---------------------------------------------------------------------------

async def test_a_nul_in_rule_params_is_422(client: Client) -> None:
    response = await client.post("/rules", json={"name": "r", "params": {"x": "a\x00b"}},
                                 headers=auth(user()))
    assert_problem(response, 422, "validation_error")


async def test_a_nul_in_a_rule_param_name_is_422(client: Client) -> None:
    response = await client.post("/rules", json={"name": "r", "params": {"x\x00": 1}},
                                 headers=auth(user()))
    assert_problem(response, 422, "validation_error")


async def test_control_characters_in_names_are_422(client: Client) -> None:
    uid = user()
    for name in ("a.png\n", "a\x85b", "tab\tbed", "nul\x00"):
        item = {**JOB["items"][0], "name": name}
        response = await client.post("/jobs", json={"items": [item]}, headers=auth(uid))
        assert_problem(response, 422, "validation_error")
        response = await client.post("/rules", json={"name": name}, headers=auth(uid))
        assert_problem(response, 422, "validation_error")


async def test_a_content_type_with_a_trailing_newline_is_422(client: Client) -> None:
    item = {**JOB["items"][0], "content_type": "image/png\n"}
    response = await client.post("/jobs", json={"items": [item]}, headers=auth(user()))
    assert_problem(response, 422, "validation_error")


async def test_a_rule_name_longer_than_its_column_is_422(client: Client) -> None:
    uid = user()
    response = await client.post("/rules", json={"name": "n" * 201}, headers=auth(uid))
    assert_problem(response, 422, "validation_error")
    response = await client.post("/rules", json={"name": "n" * 200}, headers=auth(uid))
    assert response.status_code == 201, response.text


async def test_a_credit_grant_reason_with_a_nul_is_422(client: Client) -> None:
    uid = user()
    assert (await client.get("/me", headers=auth(uid))).status_code == 200
    response = await client.post(f"/admin/users/{uid}/credits", json={
        "amount": 5, "reason": "gift\x00"}, headers={
        **auth("root", admin=True), "Idempotency-Key": "g1"})
    assert_problem(response, 422, "validation_error")


# --- JSON depth ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/rules", "/jobs", "/admin/users"])
async def test_json_nested_100000_deep_is_a_400(client: Client, path: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    body = b'{"name": "x", "params": {"a": ' + deep + b"}}"
    response = await client.post(path, content=body, headers={
        **auth("root", admin=True), "Content-Type": "application/json"})
    assert_problem(response, 400, "malformed_json")


async def test_rule_params_deeper_than_8_levels_are_422(client: Client) -> None:
    uid = user()
    params: Any = "leaf"
    for _ in range(40):
        params = {"a": params}
    response = await client.post("/rules", json={"name": "deep", "params": params},
                                 headers=auth(uid))
    assert_problem(response, 422, "validation_error")
    # The boundary (8 levels, a model whose schema takes any object) is in
    # tests/api/test_rule_presets_http.py; the default model takes its own params.
    response = await client.post("/rules", json={"name": "ok", "params": {"size": 64}},
                                 headers=auth(uid))
    assert response.status_code == 201, response.text


# --- cursors and ids -----------------------------------------------------------------------

async def test_a_cursor_with_a_huge_timestamp_is_422(client: Client) -> None:
    for raw in (b"99999999999999999999:01m8mtw9kehx97gqtzgy8w05km-1",
                b"9" * 5000 + b":x", b"-5:01m8mtw9kehx97gqtzgy8w05km-1"):
        response = await client.get("/jobs", params={"cursor": cursor_of(raw)},
                                    headers=auth(user()))
        assert_problem(response, 422, "validation_error")


async def test_a_cursor_with_a_nul_is_422(client: Client) -> None:
    for raw in (b"1700000000000:01m8mtw9kehx97gqtzgy8w05k\x00-1", b"1:x\x00"):
        response = await client.get("/jobs", params={"cursor": cursor_of(raw)},
                                    headers=auth(user()))
        assert_problem(response, 422, "validation_error")
    response = await client.get("/jobs", params={"cursor": "a" * 201}, headers=auth(user()))
    assert_problem(response, 422, "validation_error")


async def test_a_job_id_with_a_nul_is_404(client: Client) -> None:
    uid = user()
    for job_id in ("0" * 25 + "%00-3", "01jc3" + "x" * 20 + "%00-3", "abc%00",
                   "0" * 26 + "-%00", "0" * 26 + "-" + "9" * 5000):
        for method, path in (("GET", ""), ("POST", "/cancel"), ("POST", "/execute"),
                             ("POST", "/confirm-upload")):
            response = await client.request(method, f"/jobs/{job_id}{path}", headers=auth(uid))
            assert_problem(response, 404, "not_found")


async def test_a_rule_id_with_a_nul_is_404(client: Client) -> None:
    uid = user()
    for rule_id in ("0" * 25 + "%00", "abc%00"):
        assert_problem(await client.get(f"/rules/{rule_id}", headers=auth(uid)), 404,
                       "not_found")
        assert_problem(await client.delete(f"/rules/{rule_id}", headers=auth(uid)), 404,
                       "not_found")
    response = await client.post("/jobs", json={**JOB, "rule_id": "a\x00"}, headers=auth(uid))
    assert response.status_code in (404, 422), response.text


# --- Lua validates before it writes --------------------------------------------------------

@pytest.fixture(params=["real", "fake"])
def core(request: pytest.FixtureRequest, key_prefix: str) -> Core:
    client = request.getfixturevalue("real_redis" if request.param == "real" else "fake_redis")
    return Core(client, KeySpace(key_prefix, 16))


async def test_reserve_on_a_wrong_typed_key_writes_nothing(core: Core) -> None:
    """A key of another type (as a colliding user id once made) answers a code, before the
    first write: no credits held, no slot taken."""
    assert await core.ensure_user("victim62", PLANS["free"], 10)
    user_keys = core.keys.user("victim62")
    await core.client.hset(user_keys.jobs, "plan", "free")  # a hash where a zset belongs
    before = await core.user_record("victim62")
    with pytest.raises(Exception) as raised:
        await core.reserve(job_id=core.keys.new_job_id("victim62"), user_id="victim62",
                           total=2, price=1, hold_ttl_ms=60_000, meta_json="[]")
    assert await core.user_record("victim62") == before
    assert await core.client.scard(user_keys.active) == 0
    assert await core.client.zcard(user_keys.bucket.holds) == 0
    # A code, mapped to a typed error: not a WRONGTYPE error reply.
    assert getattr(raised.value, "code", None) == "internal_error"
    assert "wrong_type" in str(raised.value)
    # Once the key is repaired, the same user reserves normally.
    await core.client.delete(user_keys.jobs)
    job_id = core.keys.new_job_id("victim62")
    await core.reserve(job_id=job_id, user_id="victim62", total=2, price=1,
                       hold_ttl_ms=60_000, meta_json="[]")
    assert (await core.user_record("victim62"))["reserved"] == "2"


@pytest.mark.parametrize("finish", ["cancel", "settle"])
async def test_finishing_a_job_on_a_wrong_typed_key_writes_nothing(core: Core,
                                                                    finish: str) -> None:
    assert await core.ensure_user("victim62", PLANS["free"], 10)
    job_id = core.keys.new_job_id("victim62")
    await core.reserve(job_id=job_id, user_id="victim62", total=2, price=1,
                       hold_ttl_ms=60_000, meta_json="[]")
    await core.transition(job_id, "created", "uploaded", owner="victim62")
    await core.transition(job_id, "uploaded", "queued", owner="victim62")
    user_keys = core.keys.user("victim62")
    await core.client.delete(user_keys.active)
    await core.client.hset(user_keys.active, "plan", "free")  # a hash where a set belongs
    user_before = await core.user_record("victim62")
    job_before = await core.job_record(job_id)
    with pytest.raises(Exception) as raised:
        if finish == "cancel":
            await core.cancel(job_id, "victim62", reason="user", flush_delay_ms=0)
        else:
            await core.settle(job_id, "victim62", "failed", reason="x", flush_delay_ms=0)
    assert await core.user_record("victim62") == user_before
    assert await core.job_record(job_id) == job_before
    assert getattr(raised.value, "code", None) == "internal_error"
    assert "wrong_type" in str(raised.value)


# --- SQL outage ----------------------------------------------------------------------------

@pytest.fixture
async def sql_down(redis_url: str, key_prefix: str, tmp_path: Path,
                   real_redis: Any) -> AsyncIterator[Client]:
    """The API with its PostgreSQL on a port nothing listens on."""
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    app = create_app(settings_for(redis_url, closed, key_prefix, tmp_path))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


async def test_calls_that_need_sql_answer_503_while_it_is_down(sql_down: Client) -> None:
    admin = auth("root", admin=True)
    calls = [
        ("GET", "/jobs", auth(user()), None),
        ("GET", "/rules", auth(user()), None),
        ("GET", "/me", auth(user()), None),  # a new user: its row is written first
        ("POST", "/jobs", auth(user()), JOB),  # a new user too
        ("POST", "/admin/users", admin, {"id": user()}),
    ]
    for method, path, headers, body in calls:
        response = await sql_down.request(method, path, headers=headers, json=body)
        assert_problem(response, 503, "unavailable")
        assert int(response.headers["Retry-After"]) >= 1


async def test_ready_names_the_part_that_failed_and_no_host(sql_down: Client) -> None:
    response = await sql_down.get("/ready")
    assert_problem(response, 503, "not_ready")
    assert response.json()["checks"] == {"redis": "ok", "sql": "unavailable"}
    assert "127.0.0.1" not in response.text
    assert "postgres" not in response.text.lower()


@pytest.mark.slow  # waits out a 2 s connect timeout twice: 4 s
async def test_a_database_that_never_answers_is_a_503_in_seconds(
    redis_url: str, key_prefix: str, tmp_path: Path, real_redis: Any,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import time

    monkeypatch.setattr("service.history.engine.SQL_CONNECT_TIMEOUT_S", 2)
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/test"
        app = create_app(settings_for(redis_url, url, key_prefix, tmp_path))
        async with AsyncTestClient(app=app, timeout=60) as test_client:
            started = time.monotonic()
            response = await test_client.get("/rules", headers=auth(user()))
            assert_problem(response, 503, "unavailable")
            ready = await test_client.get("/ready")
            assert ready.json()["checks"]["sql"] == "unavailable"
            assert time.monotonic() - started < 20


# --- connections ---------------------------------------------------------------------------

def errors_counted(path: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "tollgate_requests_error":
            total += sum(sample.value for sample in metric.samples
                         if sample.name.endswith("_total") and sample.labels["path"] == path)
    return total


async def _post_with_receive(app: Litestar, token: str, receive: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/rules", "raw_path": b"/rules",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("testserver", 80), "headers": [
                 (b"authorization", f"Bearer {token}".encode()),
                 (b"content-type", b"application/json"), (b"content-length", b"1000")]}
    await app(scope, receive, send)  # type: ignore[arg-type]
    return sent


async def test_a_client_that_leaves_mid_body_is_not_a_server_error(client: Client) -> None:
    messages: Iterator[dict[str, Any]] = iter([
        {"type": "http.request", "body": b'{"name": ', "more_body": True},
        {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    before = errors_counted("/rules")
    await _post_with_receive(client.app, issue_token(SECRET, user()), receive)
    assert errors_counted("/rules") == before
    assert REGISTRY.get_sample_value("tollgate_requests_total", {
        "method": "POST", "path": "/rules", "status_code": "499", "app_name": "tollgate"})


async def test_a_body_that_trickles_past_the_read_timeout_is_a_408(
    redis_url: str, database: str, key_prefix: str, tmp_path: Path, real_redis: Any
) -> None:
    settings = settings_for(redis_url, database, key_prefix, tmp_path, body_read_timeout=0.5)
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        chunks = 0

        async def receive() -> dict[str, Any]:
            nonlocal chunks
            chunks += 1
            await asyncio.sleep(0.2)  # each chunk in time; the whole body is not
            return {"type": "http.request", "body": b" ", "more_body": True}

        sent = await asyncio.wait_for(
            _post_with_receive(test_client.app, issue_token(SECRET, user()), receive), 10)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408
    assert chunks <= 4


def test_both_servers_close_idle_keep_alive_connections() -> None:
    from service.cli.serve import granian_options, uvicorn_options

    settings = Settings(jwt_secret=SECRET, keepalive_timeout=7)
    assert uvicorn_options(settings) == {"timeout_keep_alive": 7}
    http1 = granian_options(settings)["http1_settings"]
    assert http1.header_read_timeout == 7000 and http1.keep_alive is True
    assert Settings(jwt_secret=SECRET).body_read_timeout == 30


# --- auth clock skew -----------------------------------------------------------------------

def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


async def test_a_token_without_iat_is_fine_when_exp_is_valid(client: Client) -> None:
    response = await client.get("/me", headers=signed({
        "sub": user(), "exp": now() + timedelta(minutes=5)}))
    assert response.status_code == 200, response.text


async def test_iat_and_nbf_a_little_in_the_future_are_fine(client: Client) -> None:
    response = await client.get("/me", headers=signed({
        "sub": user(), "iat": now() + timedelta(seconds=20),
        "nbf": now() + timedelta(seconds=20), "exp": now() + timedelta(minutes=5)}))
    assert response.status_code == 200, response.text


async def test_exp_a_little_in_the_past_is_fine_but_not_a_minute(client: Client) -> None:
    recent = await client.get("/me", headers=signed({
        "sub": user(), "iat": now() - timedelta(minutes=5),
        "exp": now() - timedelta(seconds=10)}))
    assert recent.status_code == 200, recent.text
    stale = await client.get("/me", headers=signed({
        "sub": user(), "iat": now() - timedelta(minutes=5),
        "exp": now() - timedelta(seconds=60)}))
    assert_problem(stale, 401, "unauthorized")
    early = await client.get("/me", headers=signed({
        "sub": user(), "nbf": now() + timedelta(seconds=90),
        "exp": now() + timedelta(minutes=5)}))
    assert_problem(early, 401, "unauthorized")


# --- item errors ---------------------------------------------------------------------------

def test_item_errors_show_no_heap_addresses() -> None:
    from workers.processors import Item
    from workers.processors.thumbnail import make_thumbnails

    [output] = make_thumbnails([Item(0, "a.png", "image/png", b"not an image")])
    assert output.error is not None
    assert "0x" not in output.error and "object at" not in output.error
    assert output.error.startswith("cannot make a thumbnail: UnidentifiedImageError")
    # Any worker's text is cleaned on the API side too, before it is stored.
    leaked = "cannot identify image file <_io.BytesIO object at 0x7f3a2c1d9e40>"
    assert clean_error(leaked) == "cannot identify image file"
    from service.contract import describe_error

    assert describe_error("processor error", ValueError(leaked)) == (
        "processor error: ValueError: cannot identify image file")


def test_the_token_command_refuses_a_user_id_outside_the_charset() -> None:
    from service.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["token", "victim62:jobs"])
    assert "is not a user id" in str(exited.value.code)
