"""A real batch against a fake API/storage server: the exact callbacks, in order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from rq.timeouts import JobTimeoutException

from service.contract import BatchItem, CallbackIn, ItemReportIn, batch_payload
from tests.workers.conftest import TOKEN, FakeApi
from workers.callbacks import CallbackClient, CallbackError, CallbackUnauthorized, RetryingClient
from workers.jobs import Batch, LeaseHeartbeat, process_batch, run_batch
from workers.processors import Item, Output
from workers.processors.noop import fail_odd, passthrough

JOB_ID = "01jobid0000000000000000000-3"


@pytest.fixture
def http() -> Iterator[RetryingClient]:
    with httpx.Client(timeout=10) as client:
        yield RetryingClient(client, sleep=lambda _: None)


def payload(api: FakeApi, count: int, *, lease_ttl_s: float = 60, batch_no: int = 0,
            token: str = TOKEN) -> dict[str, Any]:
    items = []
    for index in range(count):
        name = f"{index}.bin"
        api.inputs.setdefault(name, f"input {index}".encode())
        items.append(BatchItem(index, f"file-{index}", "application/x-test", api.input_url(name),
                               api.output_url(name), f"out/{JOB_ID}/{index}"))
    data = batch_payload(job_id=JOB_ID, batch_no=batch_no, callback_url=api.callback_url(JOB_ID),
                         callback_token=token, lease_ttl_s=60, items=items)
    data["lease_ttl_s"] = lease_ttl_s
    return data


def run(api: FakeApi, http: RetryingClient, processor: Any, count: int = 3,
        **kwargs: Any) -> dict[str, Any]:
    return run_batch(Batch.from_payload(payload(api, count, **kwargs)), processor, http)


def test_batch_sends_started_then_one_report_for_the_whole_batch(
    fake_api: FakeApi, http: RetryingClient
) -> None:
    summary = run(fake_api, http, passthrough)

    rq_id = f"tg-{JOB_ID}-0"
    assert fake_api.callbacks == [
        {"idempotency_key": f"{rq_id}:started", "event": "started"},
        {"event": "items", "items": [
            {"index": i, "ok": True, "idempotency_key": f"{JOB_ID}:item:{i}",
             "output_key": f"out/{JOB_ID}/{i}"} for i in range(3)]},
    ]
    assert set(fake_api.auth_seen) == {f"Bearer {TOKEN}"}
    assert fake_api.outputs == {
        f"{i}.bin": ("application/x-test", f"input {i}".encode()) for i in range(3)
    }
    assert summary == {"job_id": JOB_ID, "rq_job_id": rq_id, "ok": 3, "failed": 0,
                       "stopped": None}


def test_failing_items_are_reported_failed_and_not_uploaded(fake_api: FakeApi,
                                                            http: RetryingClient) -> None:
    summary = run(fake_api, http, fail_odd, count=4)

    reports = fake_api.item_reports()
    assert [(r["item_index"], r["ok"]) for r in reports] == [
        (0, True), (1, False), (2, True), (3, False)]
    assert "output_key" not in reports[1] and "odd item index 1" in reports[1]["error"]
    assert sorted(fake_api.outputs) == ["0.bin", "2.bin"]
    assert (summary["ok"], summary["failed"]) == (2, 2)


def test_missing_input_fails_only_that_item(fake_api: FakeApi, http: RetryingClient) -> None:
    data = payload(fake_api, 3)
    data["items"][1]["input_url"] = fake_api.input_url("gone.bin")
    seen: list[list[int]] = []

    def recording(items: list[Item]) -> list[Output]:
        seen.append([item.index for item in items])
        return passthrough(items)

    run_batch(Batch.from_payload(data), recording, http)

    assert seen == [[0, 2]]
    reports = {r["item_index"]: r for r in fake_api.item_reports()}
    assert reports[1]["ok"] is False and reports[1]["error"] == "download failed: HTTP 404"
    assert reports[0]["ok"] and reports[2]["ok"]


def test_downloads_of_a_batch_run_side_by_side(fake_api: FakeApi,
                                               http: RetryingClient) -> None:
    # Each GET is held until all four are in flight: one at a time would never get through.
    fake_api.download_barrier = threading.Barrier(4)
    summary = run(fake_api, http, passthrough, count=4)
    assert summary["ok"] == 4 and not fake_api.download_barrier.broken


def test_uploads_of_a_batch_run_side_by_side(fake_api: FakeApi,
                                             http: RetryingClient) -> None:
    # Each upload waits until all four arrived: one at a time, the first would time out.
    fake_api.upload_barrier = threading.Barrier(4)
    summary = run(fake_api, http, passthrough, count=4)
    assert summary["ok"] == 4 and not fake_api.upload_barrier.broken


def test_a_retried_batch_repeats_the_same_item_keys(fake_api: FakeApi,
                                                    http: RetryingClient) -> None:
    run(fake_api, http, passthrough)
    first = [report["idempotency_key"] for report in fake_api.item_reports()]
    fake_api.callbacks.clear()
    run(fake_api, http, passthrough)
    assert [report["idempotency_key"] for report in fake_api.item_reports()] == first
    assert first == [f"{JOB_ID}:item:{i}" for i in range(3)]


def test_callbacks_are_retried_through_503s(fake_api: FakeApi, http: RetryingClient) -> None:
    fake_api.fail_callbacks = 3
    summary = run(fake_api, http, passthrough, count=2)

    assert fake_api.events() == ["started", "items"]
    started = [a for a in fake_api.attempts if a["event"] == "started"]
    assert len(started) == 4
    assert summary["ok"] == 2


def test_gives_up_after_the_last_attempt(fake_api: FakeApi, http: RetryingClient) -> None:
    fake_api.fail_callbacks = 100
    with pytest.raises(CallbackError, match="gave up after 8 attempts: HTTP 503"):
        run(fake_api, http, passthrough, count=1)
    assert len(fake_api.attempts) == 8 and fake_api.outputs == {}


def test_connection_errors_are_retried_then_raised(http: RetryingClient) -> None:
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    item = BatchItem(0, "a", "x/y", f"{dead}/in", f"{dead}/out", "k")
    data = batch_payload(job_id=JOB_ID, batch_no=0, callback_url=f"{dead}/cb",
                         callback_token=TOKEN, lease_ttl_s=60, items=[item])
    with pytest.raises(CallbackError, match="ConnectError"):
        run_batch(Batch.from_payload(data), passthrough, http)


def test_unauthorized_callback_raises(fake_api: FakeApi, http: RetryingClient) -> None:
    with pytest.raises(CallbackUnauthorized):
        run(fake_api, http, passthrough, token="wrong")
    assert fake_api.callbacks == [] and len(fake_api.attempts) == 1


def test_409_on_started_stops_before_any_work(fake_api: FakeApi, http: RetryingClient) -> None:
    fake_api.closed = True
    summary = run(fake_api, http, passthrough)
    assert summary["stopped"] == "job closed: canceled"
    assert len(fake_api.attempts) == 1 and fake_api.outputs == {}


def test_409_on_the_report_stops_the_batch_quietly(fake_api: FakeApi,
                                                   http: RetryingClient) -> None:
    def canceled_meanwhile(items: list[Item]) -> list[Output]:
        fake_api.closed = True
        return passthrough(items)

    summary = run(fake_api, http, canceled_meanwhile, count=4)

    assert fake_api.item_reports() == []
    assert [a["event"] for a in fake_api.attempts] == ["started", "items"]
    assert summary["stopped"] == "job closed: canceled" and summary["ok"] == 0


def test_a_batch_past_the_report_limit_reports_in_chunks(
    fake_api: FakeApi, http: RetryingClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("workers.jobs.MAX_REPORT_ITEMS", 2)
    run(fake_api, http, passthrough, count=5)
    reports = [body for body in fake_api.callbacks if body["event"] == "items"]
    assert [[e["index"] for e in body["items"]] for body in reports] == [[0, 1], [2, 3], [4]]


def test_long_errors_split_a_report_before_it_nears_the_body_limit() -> None:
    from workers.jobs import MAX_REPORT_BYTES, report_chunks

    entries = [ItemReportIn(index=i, ok=False, idempotency_key=f"k{i}", error="x" * 1000)
               for i in range(1000)]
    chunks = report_chunks(entries)
    assert [e for chunk in chunks for e in chunk] == entries
    assert len(chunks) > 1
    assert all(len(msgspec.json.encode(CallbackIn(event="items", items=chunk)))
               <= MAX_REPORT_BYTES + 100 for chunk in chunks)
    assert report_chunks(entries[:3]) == [entries[:3]]


def test_heartbeat_renews_the_lease_while_the_processor_works(
    fake_api: FakeApi, http: RetryingClient
) -> None:
    def slow(items: list[Item]) -> list[Output]:
        assert fake_api.heartbeat_seen.wait(timeout=30), "no heartbeat while working"
        return passthrough(items)

    run(fake_api, http, slow, count=2, lease_ttl_s=0.3)

    events = fake_api.events()
    assert events[0] == "started" and events[-1] == "items"
    beats = [b for b in fake_api.callbacks if b["event"] == "heartbeat"]
    assert beats and set(beats[0]) == {"idempotency_key", "event"}
    assert len({b["idempotency_key"] for b in beats}) == len(beats)
    assert events.index("heartbeat") < events.index("items")


def test_a_refused_heartbeat_flags_the_batch_closed(
    fake_api: FakeApi, http: RetryingClient
) -> None:
    fake_api.close_on_heartbeat = True
    batch = Batch.from_payload(payload(fake_api, 1, lease_ttl_s=0.15))
    callbacks = CallbackClient(batch.callback_url, batch.callback_token, http)
    with LeaseHeartbeat(callbacks, batch) as heartbeat:
        assert heartbeat.closed.wait(timeout=30)
    assert fake_api.attempts[0]["event"] == "heartbeat" and fake_api.callbacks == []


def test_job_canceled_under_a_running_batch_reports_nothing_more(
    fake_api: FakeApi, http: RetryingClient
) -> None:
    fake_api.close_on_heartbeat = True

    def works_until_canceled(items: list[Item]) -> list[Output]:
        while not fake_api.closed:
            threading.Event().wait(0.01)
        return passthrough(items)

    summary = run(fake_api, http, works_until_canceled, count=3, lease_ttl_s=0.15)

    assert summary["stopped"] is not None and summary["stopped"].startswith("job closed")
    assert fake_api.item_reports() == [] and summary["ok"] == 0


def test_batch_timeout_reports_the_unreported_items_failed(
    fake_api: FakeApi, http: RetryingClient
) -> None:
    def times_out(items: list[Item]) -> list[Output]:
        raise JobTimeoutException("Task exceeded maximum timeout value (5 seconds)")

    with pytest.raises(JobTimeoutException):
        run(fake_api, http, times_out, count=2)

    reports = fake_api.item_reports()
    assert [(r["item_index"], r["ok"]) for r in reports] == [(0, False), (1, False)]
    assert all("RQ timeout" in r["error"] for r in reports)


def test_process_batch_runs_the_configured_processor(
    fake_api: FakeApi, processor_env: Any
) -> None:
    processor_env("workers.processors.noop:fail_odd")
    summary = process_batch(payload(fake_api, 3))
    assert (summary["ok"], summary["failed"]) == (2, 1)
    assert [r["ok"] for r in fake_api.item_reports()] == [True, False, True]
