"""Balance alerts and the account webhook (docs/billing.md) over HTTP, on standalone Redis
(with PostgreSQL), the embedded fakeredis and a Redis Cluster: each event is recorded by
the script that moved the balance, and delivered by the flusher's webhook sender to a real
receiver, signed (checked with the Standard Webhooks library)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from service.flusher.webhooks import WebhookSender
from service.jobs.deliveries import sender_client
from service.runtime import open_runtime
from service.state.outbox import Outbox
from tests.api.conftest import SECRET, Api, Clock
from tests.api.flow import create_job, items
from tests.api.history import flush_everything
from tests.api.receiver import Receiver

TIMEOUT_S = 1.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"webhook_allow_private": True, "webhook_timeout": TIMEOUT_S}


@pytest.fixture(params=["real", "embedded", "cluster"])
def alerts_api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Api:
    """As tests/api/conftest.py's any_api, with private receivers allowed (the receiver
    listens on 127.0.0.1): the embedded and Cluster fixtures read the rest from the
    environment."""
    monkeypatch.setenv("TOLLGATE_WEBHOOK_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("TOLLGATE_WEBHOOK_TIMEOUT", str(TIMEOUT_S))
    fixture = {"real": "api", "embedded": "embedded_api", "cluster": "cluster_api"}
    api: Api = request.getfixturevalue(fixture[request.param])
    return api


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
async def sender(alerts_api: Api) -> AsyncIterator[WebhookSender]:
    """A delivery pass as the flusher runs it, on a Runtime of its own."""
    rt = await open_runtime(alerts_api.settings, SECRET)

    async def no_job(owner: str, job_id: str) -> dict[str, Any] | None:
        return None

    client = sender_client(alerts_api.settings)
    yield WebhookSender(Outbox(rt.core), alerts_api.settings, no_job, client)
    await client.aclose()
    await rt.close()


async def put(api: Api, user: str, path: str, body: Any, status: int = 200) -> dict[str, Any]:
    response = await api.client.put(path, json=body, headers=api.auth(user))
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def hold(api: Api, user: str, n: int) -> dict[str, Any]:
    """A job of n items (price 1): n credits held."""
    return await create_job(api, user, n)


async def grant(api: Api, user: str, amount: int, key: str) -> None:
    response = await api.client.post(
        f"/admin/users/{user}/credits", json={"amount": amount, "reason": "top-up"},
        headers={**api.auth("root", admin=True), "Idempotency-Key": key})
    assert response.status_code == 200, response.text


async def cancel(api: Api, user: str, job_id: str) -> None:
    response = await api.client.post(f"/jobs/{job_id}/cancel", headers=api.auth(user))
    assert response.status_code == 200, response.text


async def delivered(sender: WebhookSender, receiver: Receiver, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while len(receiver.requests) < n and time.monotonic() < deadline:
        await sender.deliver_once()
        await asyncio.sleep(0.1)
    await sender.deliver_once()  # nothing more is due
    return [json.loads(r.body) for r in receiver.requests]


async def secret_of(api: Api, user: str) -> str:
    response = await api.client.get("/me/webhook-secret", headers=api.auth(user))
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    return secret


async def deliveries(api: Api, user: str) -> list[dict[str, Any]]:
    response = await api.client.get("/me/webhook/deliveries", headers=api.auth(user))
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["items"]
    return listed


async def test_low_balance_fires_once_per_crossing(
    alerts_api: Api, receiver: Receiver, sender: WebhookSender
) -> None:
    """Crossing low_balance downwards twice, with a grant between: exactly two credits.low,
    each verified with the Standard Webhooks library."""
    api, user = alerts_api, alerts_api.user()
    await api.admin_create_user(user, plan="pro", credits=10)
    hook = await put(api, user, "/me/webhook", {"url": receiver.url,
                                                "events": ["credits.low"]})
    assert hook == {"url": receiver.url, "events": ["credits.low"]}
    assert await put(api, user, "/me/alerts", {"low_balance": 5}) == {"low_balance": 5}

    await hold(api, user, 3)  # 10 -> 7: still above
    await hold(api, user, 3)  # 7 -> 4: below, fires
    await hold(api, user, 1)  # 4 -> 3: still below, nothing
    await grant(api, user, 10, "g1")  # 3 -> 13: armed again
    await hold(api, user, 9)  # 13 -> 4: fires again

    payloads = await delivered(sender, receiver, 2)
    assert [p["type"] for p in payloads] == ["credits.low", "credits.low"]
    assert [p["data"] for p in payloads] == [
        {"user_id": user, "available": 4, "low_balance": 5},
        {"user_id": user, "available": 4, "low_balance": 5}]
    wh = Webhook(await secret_of(api, user))
    for request in receiver.requests:
        verified = wh.verify(request.body, request.headers)
        assert verified["type"] == "credits.low"
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 2

    log = await deliveries(api, user)
    assert len(log) == 2 and all(entry["delivered_at"] and entry["attempts"] == 1
                                 for entry in log)
    assert {entry["id"] for entry in log} == {r.headers["webhook-id"] for r in receiver.requests}


async def test_exhausted_fires_below_the_cheapest_price_and_rearms(
    alerts_api: Api, receiver: Receiver, sender: WebhookSender
) -> None:
    api, user = alerts_api, alerts_api.user()
    await api.admin_create_user(user, plan="pro", credits=4)
    await put(api, user, "/me/webhook", {"url": receiver.url,
                                         "events": ["credits.exhausted", "credits.low"]})
    job = await hold(api, user, 4)  # 4 -> 0: below the price (1)
    assert len(await delivered(sender, receiver, 1)) == 1
    await cancel(api, user, job["id"])  # 0 -> 4: the release re-arms it
    await hold(api, user, 2)  # 4 -> 2: above the price, nothing
    await grant(api, user, -2, "take")  # 2 -> 0: an admin removal fires it again
    payloads = await delivered(sender, receiver, 2)
    # No low_balance set: credits.low never fires, and the data says null.
    assert [p["type"] for p in payloads] == ["credits.exhausted", "credits.exhausted"]
    assert [p["data"] for p in payloads] == [
        {"user_id": user, "available": 0, "low_balance": None},
        {"user_id": user, "available": 0, "low_balance": None}]


@pytest.mark.slow  # over 3 s: the full suite runs it, not the fast lane
async def test_no_event_without_a_subscribed_webhook(
    alerts_api: Api, receiver: Receiver, sender: WebhookSender
) -> None:
    """An event the webhook does not ask for, or with the webhook removed, is not sent; the
    alert still moves, so it fires at the next crossing after the webhook is back."""
    api, user = alerts_api, alerts_api.user()
    await api.admin_create_user(user, plan="pro", credits=10)
    await put(api, user, "/me/alerts", {"low_balance": 5})
    await put(api, user, "/me/webhook", {"url": receiver.url, "events": ["credits.exhausted"]})
    first = await hold(api, user, 6)  # 10 -> 4: low fires, not subscribed
    response = await api.client.delete("/me/webhook", headers=api.auth(user))
    assert response.status_code == 204
    assert (await api.client.get("/me/webhook", headers=api.auth(user))).status_code == 404
    await cancel(api, user, first["id"])  # 4 -> 10, armed
    await hold(api, user, 6)  # fires, no webhook
    await put(api, user, "/me/webhook", {"url": receiver.url, "events": ["credits.low"]})
    await grant(api, user, 2, "g")  # 4 -> 6, armed
    await hold(api, user, 2)  # 6 -> 4: fires, sent
    payloads = await delivered(sender, receiver, 1)
    assert [p["type"] for p in payloads] == ["credits.low"]
    assert (await api.client.get("/me/alerts", headers=api.auth(user))).json() == {
        "low_balance": 5}
    await put(api, user, "/me/alerts", {"low_balance": None})
    await grant(api, user, 10, "g2")
    await hold(api, user, 13)  # 14 -> 1: the alert is off
    assert len(await delivered(sender, receiver, 2)) == 1


@pytest.mark.slow  # over 3 s: the full suite runs it, not the fast lane
async def test_a_failing_receiver_is_retried_with_the_same_id(
    alerts_api: Api, receiver: Receiver, sender: WebhookSender
) -> None:
    api, user = alerts_api, alerts_api.user()
    await api.admin_create_user(user, plan="pro", credits=10)
    await put(api, user, "/me/webhook", {"url": receiver.url, "events": ["credits.low"]})
    await put(api, user, "/me/alerts", {"low_balance": 5})
    receiver.plan = [500]
    await hold(api, user, 8)
    assert await sender.deliver_once() == 1
    [entry] = await deliveries(api, user)
    assert entry["attempts"] == 1 and entry["last_status"] == 500
    assert entry["delivered_at"] is None and entry["next_attempt_at"]
    assert entry["data"] == {"user_id": user, "available": 2, "low_balance": 5}
    # The first retry is due 5 s later (service.jobs.deliveries.RETRY_DELAYS_S).
    payloads = await delivered(sender, receiver, 2)
    assert len(payloads) == 2 and payloads[0] == payloads[1]
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == entry["id"]
    [entry] = await deliveries(api, user)
    assert entry["attempts"] == 2 and entry["last_status"] == 200 and entry["delivered_at"]


@pytest.mark.parametrize(("path", "body", "code"), [
    ("/me/webhook", {"url": "http://example.com/h"}, "validation_error"),  # no events
    ("/me/webhook", {"url": "http://example.com/h", "events": []}, "validation_error"),
    ("/me/webhook", {"url": "http://example.com/h", "events": ["job.completed"]},
     "validation_error"),
    ("/me/webhook", {"url": "ftp://example.com/h", "events": ["credits.low"]},
     "validation_error"),
    ("/me/webhook", {"url": "http://example.com/" + "a" * 2100, "events": ["credits.low"]},
     "validation_error"),
    ("/me/webhook", {"url": "http://example.com/h", "events": ["credits.low"], "x": 1},
     "validation_error"),
    ("/me/webhook", {"url": "http://a..b/h", "events": ["credits.low"]},
     "webhook_url_not_allowed"),
    ("/me/alerts", {}, "validation_error"),
    ("/me/alerts", {"low_balance": 0}, "validation_error"),
    ("/me/alerts", {"low_balance": -3}, "validation_error"),
    ("/me/alerts", {"low_balance": 1.5}, "validation_error"),
    ("/me/alerts", {"low_balance": "5"}, "validation_error"),
    ("/me/alerts", {"low_balance": 5.0}, "validation_error"),
    ("/me/alerts", {"low_balance": 10**13}, "validation_error"),
])
async def test_bad_settings_are_422(embedded_api: Api, path: str, body: dict[str, Any],
                                    code: str) -> None:
    api, user = embedded_api, embedded_api.user()
    response = await api.client.put(path, json=body, headers=api.auth(user))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


async def test_a_private_receiver_is_refused_unless_allowed(embedded_api: Api) -> None:
    """The default settings (no TOLLGATE_WEBHOOK_ALLOW_PRIVATE): loopback is refused, as for
    a job's webhook."""
    api, user = embedded_api, embedded_api.user()
    response = await api.client.put(
        "/me/webhook", json={"url": "http://127.0.0.1:9/h", "events": ["credits.low"]},
        headers=api.auth(user))
    assert response.status_code == 422 and response.json()["code"] == "webhook_url_not_allowed"
    assert (await api.client.get("/me/webhook", headers=api.auth(user))).status_code == 404


async def test_settings_come_back_after_redis_loses_the_user(
    alerts_api: Api, receiver: Receiver, sender: WebhookSender
) -> None:
    """SQL keeps them: a user Redis lost is rebuilt with its webhook and alert, and the
    alert's state from the balance."""
    api, user = alerts_api, alerts_api.user()
    await api.admin_create_user(user, plan="pro", credits=10)
    await put(api, user, "/me/webhook", {"url": receiver.url, "events": ["credits.low"]})
    await put(api, user, "/me/alerts", {"low_balance": 5})
    first = await hold(api, user, 6)  # fires
    assert len(await delivered(sender, receiver, 1)) == 1
    await cancel(api, user, first["id"])
    core = sender.outbox.core
    user_keys = core.keys.user(user)
    await core.runner.execute_command("DEL", user_keys.base)
    me = await api.client.get("/me", headers=api.auth(user))  # rebuilt from SQL
    assert me.json()["credits"]["available"] == 10
    await hold(api, user, 7)  # 10 -> 3: fires from the restored settings
    await hold(api, user, 1)  # still below: nothing
    payloads = await delivered(sender, receiver, 2)
    assert [p["data"]["available"] for p in payloads] == [4, 3]


async def test_concurrent_holds_record_one_crossing(
    alerts_api: Api, receiver: Receiver
) -> None:
    """Concurrent holds across the threshold: exactly one of them records credits.low (the
    check runs in reserve.lua with the hold)."""
    api, user = alerts_api, alerts_api.user()
    await api.admin_create_user(user, plan="pro", credits=20)
    await put(api, user, "/me/webhook", {"url": receiver.url, "events": ["credits.low"]})
    await put(api, user, "/me/alerts", {"low_balance": 15})
    answers = await asyncio.gather(*(  # 8: within the pro plan's concurrency
        api.client.post("/jobs", json={"items": items(1)}, headers=api.auth(user))
        for _ in range(8)))
    assert sum(1 for a in answers if a.status_code == 201) == 8
    log = await deliveries(api, user)
    assert [entry["data"]["available"] for entry in log] == [14]


async def test_the_clients_set_and_remove_alerts_and_the_webhook(
    embedded_api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.client import AsyncTollgate, ProblemError, Tollgate

    api, user = embedded_api, embedded_api.user()
    await api.admin_create_user(user, plan="pro", credits=10)
    async with AsyncTollgate(api.url, api.token(user)) as tg:
        assert await tg.webhook() is None
        refused = None
        try:  # the embedded API refuses a loopback receiver by default
            await tg.set_webhook(receiver.url, ["credits.low"])
        except ProblemError as error:
            refused = error.code
        assert refused == "webhook_url_not_allowed"
        assert await tg.set_webhook("https://8.8.4.4/hooks", ["credits.low"]) == {
            "url": "https://8.8.4.4/hooks", "events": ["credits.low"]}
        assert await tg.set_alerts(low_balance=5) == {"low_balance": 5}
        await tg.create([("a.png", b"\x89PNG")] * 6)  # 10 -> 4: credits.low recorded
        [delivery] = await tg.account_deliveries()
        assert delivery["type"] == "credits.low" and delivery["data"]["available"] == 4

    def blocking() -> None:
        with Tollgate(api.url, api.token(user)) as sync_tg:
            assert sync_tg.alerts() == {"low_balance": 5}
            assert sync_tg.webhook() == {"url": "https://8.8.4.4/hooks",
                                         "events": ["credits.low"]}
            sync_tg.delete_webhook()
            assert sync_tg.webhook() is None
            assert sync_tg.set_alerts(low_balance=None) == {"low_balance": None}
            assert len(sync_tg.account_deliveries()) == 1

    await asyncio.to_thread(blocking)


async def test_a_grant_expiring_fires_credits_low_in_the_expiry_call(
    alerts_api: Api, receiver: Receiver, sender: WebhookSender, clock: Clock
) -> None:
    """The flusher's expiry (lua/grants_expire.lua) lowers available: it checks the alert in
    the same call, as a hold does."""
    api, user = alerts_api, alerts_api.user()
    await api.admin_create_user(user, plan="pro", credits=0)
    await put(api, user, "/me/webhook", {"url": receiver.url, "events": ["credits.low"]})
    await put(api, user, "/me/alerts", {"low_balance": 5})
    expires = datetime.now(UTC) + timedelta(seconds=2)
    for amount, extra, key in ((10, {"kind": "promotional",
                                     "expires_at": expires.isoformat()}, "g-exp"),
                               (3, {}, "g-paid")):
        response = await api.client.post(
            f"/admin/users/{user}/credits",
            json={"amount": amount, "reason": "top-up", **extra},
            headers={**api.auth("root", admin=True), "Idempotency-Key": key})
        assert response.status_code == 200, response.text
    assert await deliveries(api, user) == []  # 13: above
    clock.move_past(expires)
    await flush_everything(api)  # the flusher's pass expires the grant: 13 -> 3
    payloads = await delivered(sender, receiver, 1)
    assert [(p["type"], p["data"]) for p in payloads] == [
        ("credits.low", {"user_id": user, "available": 3, "low_balance": 5})]


async def test_credits_expiring_comes_24_hours_before_a_grant_expires(
    alerts_api: Api, receiver: Receiver, sender: WebhookSender, clock: Clock
) -> None:
    """A grant expiring in 24 h and 2 s: credits.expiring 2 s from now (by tollgate's clock,
    moved on), once, naming the grant; a grant without credits left by then sends nothing."""
    api, user = alerts_api, alerts_api.user()
    await api.admin_create_user(user, plan="pro", credits=0)
    await put(api, user, "/me/webhook", {"url": receiver.url, "events": ["credits.expiring"]})
    expires = datetime.now(UTC) + timedelta(days=1, seconds=2)
    response = await api.client.post(
        f"/admin/users/{user}/credits",
        json={"amount": 10, "reason": "promo", "kind": "promotional",
              "expires_at": expires.isoformat()},
        headers={**api.auth("root", admin=True), "Idempotency-Key": "g-exp"})
    assert response.status_code == 200, response.text
    flushed = await flush_everything(api)
    assert await deliveries(api, user) == []  # not yet
    del flushed
    clock.move_past(expires - timedelta(days=1), by_s=0.3)
    await flush_everything(api)
    await flush_everything(api)  # once only
    payloads = await delivered(sender, receiver, 1)
    [grant_view] = (await api.client.get("/me", headers=api.auth(user))).json()[
        "credits"]["grants"]
    assert [(p["type"], p["data"]) for p in payloads] == [
        ("credits.expiring", {"user_id": user, "available": 10, "low_balance": None,
                              "grant": grant_view["id"]})]


@pytest.mark.slow  # over 3 s: the full suite runs it, not the fast lane
async def test_credits_expiring_survives_a_redis_loss_before_it_is_due(
    alerts_api: Api, receiver: Receiver, sender: WebhookSender
) -> None:
    """The user's record, grants and the bucket's warning index lost: the rebuild from SQL
    puts a warning not yet due back, so it is still sent, once."""
    api, user = alerts_api, alerts_api.user()
    await api.admin_create_user(user, plan="pro", credits=0)
    await put(api, user, "/me/webhook", {"url": receiver.url, "events": ["credits.expiring"]})
    expires = datetime.now(UTC) + timedelta(days=1, seconds=3)
    response = await api.client.post(
        f"/admin/users/{user}/credits",
        json={"amount": 10, "reason": "promo", "kind": "promotional",
              "expires_at": expires.isoformat()},
        headers={**api.auth("root", admin=True), "Idempotency-Key": "g-exp-lost"})
    assert response.status_code == 200, response.text
    await flush_everything(api)  # the grant's ledger row reaches SQL
    core = sender.outbox.core
    keys = core.keys.user(user)
    await core.runner.execute_command("DEL", keys.base, keys.grants, keys.bucket.grant_warn,
                                      keys.bucket.grant_expiry)
    me = await api.client.get("/me", headers=api.auth(user))  # rebuilt from SQL
    assert me.json()["credits"]["available"] == 10
    assert await deliveries(api, user) == []  # not yet
    await asyncio.sleep(3.3)
    await flush_everything(api)
    await flush_everything(api)  # once only
    payloads = await delivered(sender, receiver, 1)
    assert [(p["type"], p["data"]["grant"]) for p in payloads] == [
        ("credits.expiring", me.json()["credits"]["grants"][0]["id"])]
