"""service.state.records: the Redis hashes and ledger entries read into typed values."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from service.state.fsm import JobState
from service.state.records import (
    JobRecord,
    LedgerEntry,
    UserRecord,
    datetime_to_ms,
    iso_z,
    ms_to_datetime,
)

T0 = 1_764_130_000_123


def test_ms_survive_the_round_trip_through_datetime() -> None:
    for ms in (T0, T0 + 1, 1_800_000_000_999, 1, 0):
        assert datetime_to_ms(ms_to_datetime(ms)) == ms


def test_times_read_as_utc_and_show_with_a_z() -> None:
    assert ms_to_datetime("") is None and ms_to_datetime(None) is None
    assert iso_z(ms_to_datetime(T0)) == "2025-11-26T04:06:40.123000Z"
    assert iso_z(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"  # naive is UTC
    assert iso_z(None) is None


def test_a_reserved_job_reads_as_reserve_lua_writes_it() -> None:
    written = {"id": "j", "owner": "ann", "state": "created", "total": "2", "done": "0",
               "failed": "0", "price": "3", "cost": "6", "charged": "0", "refunded": "0",
               "created_at": str(T0), "updated_at": str(T0), "rule_id": "", "model": "m"}
    assert JobRecord.from_redis(written) == JobRecord.reserved(
        "j", "ann", total=2, price=3, rule_id="", model="m", at_ms=T0)


def test_item_outcomes_follow_the_meta_and_unreported_items_are_pending() -> None:
    job = {"id": "j", "owner": "ann", "state": "done", "total": "3", "created_at": str(T0)}
    meta = json.dumps([{"name": "a.png", "content_type": "image/png", "size": 4}])
    record = JobRecord.from_redis(job, {"0": "ok:jobs/j/out/0", "1": "failed:bad: pixel"}, meta)
    assert record is not None and record.state is JobState.DONE
    assert record.items == [
        {"index": 0, "name": "a.png", "content_type": "image/png", "size": 4, "status": "ok",
         "output_key": "jobs/j/out/0"},
        {"index": 1, "name": None, "content_type": None, "size": None, "status": "failed",
         "error": "bad: pixel"},
        {"index": 2, "name": None, "content_type": None, "size": None, "status": "pending"},
    ]
    assert record.history_row()["state"] == "done"
    assert JobRecord.from_redis({}) is None


def test_users_and_ledger_entries_read_with_their_numbers() -> None:
    user = UserRecord.from_redis({"plan": "pro", "available": "7", "reserved": "3",
                                  "spent": "0", "granted": "10", "max_active": "10",
                                  "max_rules": "20"})
    assert user == UserRecord("pro", 7, 3, 0, 10, 10, 20)
    assert UserRecord.from_redis({}) is None
    entry = LedgerEntry.from_json(json.dumps({"id": "charge:j", "user_id": "ann",
                                              "kind": "charge", "amount": -2, "job_id": "j",
                                              "at": T0}))
    assert entry.history_row() == {"id": "charge:j", "user_id": "ann", "kind": "charge",
                                   "amount": -2, "job_id": "j", "reason": None,
                                   "at": datetime.fromtimestamp(T0 / 1000, tz=UTC)}
