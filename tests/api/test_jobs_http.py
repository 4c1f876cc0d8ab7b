"""The seven job endpoints over HTTP on real Redis, PostgreSQL and S3 (moto server)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rq import Queue

from service.contract import rq_job_id
from service.runtime import open_runtime
from service.state.keys import KeySpace
from tests.api.conftest import SECRET, Api
from tests.api.flow import (
    PNG_BYTES,
    callback,
    create_job,
    items,
    me,
    queued_job,
    report_item,
    upload_all,
)
from tests.api.scheduling import dispatcher, one_pass, register_worker


async def test_create_job_holds_credits_and_hands_out_upload_urls(api: Api) -> None:
    user = api.user()
    job = await create_job(api, user, 3)
    assert job["status"] == "created"
    assert job["total_items"] == 3 and job["cost"] == 3
    assert [u["index"] for u in job["uploads"]] == [0, 1, 2]
    assert all(u["method"] == "PUT" and u["expires_at"] for u in job["uploads"])
    credits = (await me(api, user))["credits"]
    assert [g["remaining"] for g in credits.pop("grants")] == [7]  # drawn from the signup
    assert credits == {"available": 7, "reserved": 3, "spent": 0, "granted": 10}


async def test_uploaded_bytes_land_in_s3_and_confirm_moves_to_uploaded(api: Api) -> None:
    user = api.user()
    job = await create_job(api, user, 2)
    await upload_all(job)
    response = await api.client.post(f"/jobs/{job['id']}/confirm-upload", headers=api.auth(user))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "uploaded"


async def test_confirm_upload_lists_the_missing_indexes(api: Api) -> None:
    user = api.user()
    job = await create_job(api, user, 3)
    await upload_all(job, skip=frozenset({0, 2}))
    response = await api.client.post(f"/jobs/{job['id']}/confirm-upload", headers=api.auth(user))
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "uploads_missing"
    assert response.json()["missing"] == [0, 2]


async def test_an_executed_job_reaches_rq_through_the_dispatcher_by_deterministic_ids(
        api: Api) -> None:
    user = api.user()
    job = await queued_job(api, user, 2)
    assert job["status"] == "queued"
    queue = Queue(api.settings.queue_name, connection=_rq_connection(api))
    assert queue.get_job_ids() == []  # it waits in tollgate's dispatch order
    rt = await open_runtime(api.settings, SECRET)
    try:
        register_worker(rt, "w1")
        await one_pass(dispatcher(rt))
    finally:
        await rt.close()
    assert rq_job_id(job["id"], 0) in queue.get_job_ids()
    queue.connection.close()


async def test_execute_before_upload_is_an_invalid_transition(api: Api) -> None:
    user = api.user()
    job = await create_job(api, user, 1)
    response = await api.client.post(f"/jobs/{job['id']}/execute", headers=api.auth(user))
    assert response.status_code == 409
    assert response.json()["code"] == "invalid_transition"


async def test_callbacks_finish_and_settle_the_job(api: Api) -> None:
    user = api.user()
    job = await queued_job(api, user, 3)
    started = await callback(api, job["id"], user, idempotency_key="s", event="started")
    assert started.json()["status"] == "running"
    await report_item(api, job["id"], user, 0)
    await report_item(api, job["id"], user, 1, ok=False)
    last = await report_item(api, job["id"], user, 2)
    assert last == {"duplicate": False, "status": "done", "done_items": 2, "failed_items": 1}
    view = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert (view["charged"], view["refunded"], view["progress"]) == (2, 1, 1.0)
    assert [i["status"] for i in view["items"]] == ["ok", "failed", "ok"]
    assert "result_url" in view["items"][0] and view["items"][1]["error"] == "processor raised"
    credits = (await me(api, user))["credits"]
    assert [g["remaining"] for g in credits.pop("grants")] == [8]  # back to the signup grant
    assert credits == {"available": 8, "reserved": 0, "spent": 2, "granted": 10}


async def test_repeated_and_rekeyed_callbacks_count_once(api: Api) -> None:
    user = api.user()
    job = await queued_job(api, user, 2)
    first = await report_item(api, job["id"], user, 0)
    again = await report_item(api, job["id"], user, 0)
    rekeyed = await report_item(api, job["id"], user, 0, key="another-key")
    assert not first["duplicate"] and again["duplicate"] and rekeyed["duplicate"]
    assert rekeyed["done_items"] == 1


async def test_callback_needs_this_jobs_token(api: Api) -> None:
    user = api.user()
    job = await queued_job(api, user, 1)
    other = await queued_job(api, api.user(), 1)
    body = {"idempotency_key": "k", "event": "started"}
    no_token = await api.client.post(f"/jobs/{job['id']}/callback", json=body)
    user_token = await api.client.post(f"/jobs/{job['id']}/callback", json=body,
                                       headers=api.auth(user))
    from tests.api.flow import worker_auth

    wrong_job = await api.client.post(f"/jobs/{job['id']}/callback", json=body,
                                      headers=worker_auth(other["id"], user))
    assert [r.status_code for r in (no_token, user_token, wrong_job)] == [401, 401, 401]
    assert no_token.json()["code"] == "unauthorized"


async def test_cancel_refunds_and_later_callbacks_change_nothing(api: Api) -> None:
    user = api.user()
    job = await queued_job(api, user, 4)
    await report_item(api, job["id"], user, 0)
    canceled = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    assert canceled.status_code == 200
    assert (canceled.json()["status"], canceled.json()["charged"],
            canceled.json()["refunded"]) == ("canceled", 1, 3)
    late = await callback(api, job["id"], user, idempotency_key="late", event="item",
                          item_index=1, ok=True)
    assert late.status_code == 409 and late.json()["code"] == "invalid_transition"
    assert (await me(api, user))["credits"]["spent"] == 1
    repeat = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    assert repeat.status_code == 200


async def test_heartbeat_renews_the_lease_and_reports_progress_until_the_job_ends(
    api: Api, real_redis: Any
) -> None:
    user = api.user()
    job = await queued_job(api, user, 3)
    await callback(api, job["id"], user, idempotency_key="s", event="started")
    await report_item(api, job["id"], user, 0)
    keys = KeySpace(api.settings.key_prefix, api.settings.buckets).job(job["id"])
    assert keys is not None
    # The lease as if it were about to run out: only a renewal can push it out again.
    await real_redis.zadd(keys.bucket.leases, {job["id"]: 1})
    sent_ms = time.time() * 1000
    beat = await callback(api, job["id"], user, idempotency_key="hb1", event="heartbeat")
    assert beat.status_code == 200
    assert beat.json() == {"duplicate": False, "status": "running", "done_items": 1,
                           "failed_items": 0}
    renewed = await real_redis.zscore(keys.bucket.leases, job["id"])
    assert renewed >= sent_ms + api.settings.lease_ttl * 1000 - 1000, renewed
    await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    late = await callback(api, job["id"], user, idempotency_key="hb2", event="heartbeat")
    assert late.status_code == 409 and late.json()["code"] == "invalid_transition"


async def test_cancel_of_a_finished_job_is_refused(api: Api) -> None:
    user = api.user()
    job = await queued_job(api, user, 1)
    await report_item(api, job["id"], user, 0)
    response = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    assert response.status_code == 409 and response.json()["code"] == "invalid_transition"


async def test_idempotency_key_returns_the_same_job_and_refuses_another_body(api: Api) -> None:
    user = api.user()
    headers = {**api.auth(user), "Idempotency-Key": "order-42"}
    first = await api.client.post("/jobs", json={"items": items(2)}, headers=headers)
    second = await api.client.post("/jobs", json={"items": items(2)}, headers=headers)
    other = await api.client.post("/jobs", json={"items": items(3)}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    assert (await me(api, user))["credits"]["reserved"] == 2


async def test_insufficient_credits_and_concurrency_limit(api: Api) -> None:
    user = api.user()
    too_big = await api.client.post("/jobs", json={"items": items(11)}, headers=api.auth(user))
    assert too_big.status_code == 402 and too_big.json()["code"] == "insufficient_credits"
    await create_job(api, user, 1)
    second = await api.client.post("/jobs", json={"items": items(1)}, headers=api.auth(user))
    assert second.status_code == 429 and second.json()["code"] == "concurrency_limit"


async def test_another_users_job_is_a_404(api: Api) -> None:
    owner, stranger = api.user(), api.user()
    job = await create_job(api, owner, 1)
    for method, path in (("GET", ""), ("POST", "/confirm-upload"), ("POST", "/execute"),
                         ("POST", "/cancel")):
        response = await api.client.request(method, f"/jobs/{job['id']}{path}",
                                            headers=api.auth(stranger))
        assert response.status_code == 404, (path, response.text)
        assert response.json()["code"] == "not_found"


async def test_list_is_newest_first_with_a_cursor_across_live_and_history(api: Api) -> None:
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=100)
    ids = []
    for _ in range(5):
        job = await create_job(api, user, 1)
        ids.append(job["id"])
        await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    from tests.api.history import flush_everything

    await flush_everything(api)  # the first jobs move to SQL; later ones stay live
    await create_job(api, user, 1)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get("/jobs", params=params, headers=api.auth(user))).json()
        seen.extend(job["id"] for job in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[1:] == list(reversed(ids))
    assert len(seen) == 6
    canceled = (await api.client.get("/jobs", params={"status": "canceled"},
                                     headers=api.auth(user))).json()
    assert [job["id"] for job in canceled["items"]] == list(reversed(ids))


async def test_finished_job_reads_the_same_after_it_moved_to_sql(api: Api) -> None:
    user = api.user()
    job = await queued_job(api, user, 2)
    await report_item(api, job["id"], user, 0)
    await report_item(api, job["id"], user, 1, ok=False)
    live = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    from tests.api.history import flush_everything

    await flush_everything(api)
    history = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    for view in (live, history):
        for item in view["items"]:
            item.pop("result_url", None)
    assert history == live


async def test_real_bytes_round_trip_through_presigned_urls(api: Api) -> None:
    user = api.user()
    job = await create_job(api, user, 1)
    await upload_all(job)
    stored = await asyncio.to_thread(_read_s3, api, f"jobs/{job['id']}/in/0")
    assert stored == PNG_BYTES


def _read_s3(api: Api, key: str) -> bytes:
    import boto3

    s3 = boto3.client("s3", endpoint_url=api.settings.s3_endpoint, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    body: bytes = s3.get_object(Bucket=api.settings.s3_bucket, Key=key)["Body"].read()
    return body


def _rq_connection(api: Api) -> object:
    import redis

    return redis.Redis.from_url(api.settings.queue_redis_url or "")


async def test_a_user_lost_from_redis_is_provisioned_again(api: Api, real_redis: object) -> None:
    from service.state.keys import KeySpace

    user = api.user()
    await me(api, user)
    await real_redis.delete(KeySpace(api.settings.key_prefix, 16).user(user).base)  # type: ignore[attr-defined]
    job = await create_job(api, user, 1)
    assert job["status"] == "created"


async def test_the_created_job_reads_back_exactly_as_it_was_returned(api: Api) -> None:
    user = api.user()
    created = await create_job(api, user, 2)
    read = (await api.client.get(f"/jobs/{created['id']}", headers=api.auth(user))).json()
    for field in ("id", "status", "total_items", "done_items", "failed_items", "progress",
                  "cost", "charged", "refunded", "rule_id", "created_at", "updated_at",
                  "started_at", "finished_at", "reason"):
        assert created[field] == read[field], field


async def test_actions_on_a_job_already_in_history_answer_its_state(api: Api) -> None:
    user = api.user()
    job = await create_job(api, user, 1)
    await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    from tests.api.history import flush_everything

    await flush_everything(api)
    for action, status in (("confirm-upload", 200), ("execute", 202), ("cancel", 200)):
        response = await api.client.post(f"/jobs/{job['id']}/{action}", headers=api.auth(user))
        assert response.status_code == status, action
        assert response.json()["status"] == "canceled", action
    stranger = await api.client.post(f"/jobs/{job['id']}/execute", headers=api.auth(api.user()))
    assert stranger.status_code == 404


async def test_a_repeated_execute_places_what_a_crash_left_out_of_the_order(
        api: Api) -> None:
    import redis as sync_redis

    user = api.user()
    job = await queued_job(api, user, 1)
    order = KeySpace(api.settings.key_prefix, api.settings.buckets).sched(
        api.settings.queue_name).order
    connection = sync_redis.Redis.from_url(api.settings.redis_url or "")
    connection.zrem(order, job["id"])  # the API died after the bucket's script
    again = await api.client.post(f"/jobs/{job['id']}/execute", headers=api.auth(user))
    assert again.status_code == 202 and again.json()["status"] == "queued"
    assert connection.zscore(order, job["id"]) is not None
    connection.close()
