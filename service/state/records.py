"""The Redis records read into typed values: hash field names, item outcomes and times, once.

The Lua scripts write these hashes (reserve.lua, finish_job.lua, item_result.lua, ensure_user.lua)
and the ledger entries (JSON); this module is the one Python reader. A JobRecord's fields
carry the names of the jobs_log columns, so a live job and a job in history read alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, overload

from service.state.fsm import JobState

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Job hash fields read before a record is converted (the flusher keeps refused ones raw).
JOB_ID, JOB_OWNER, JOB_STATE, JOB_TOTAL = "id", "owner", "state", "total"
# Set by mark_in_sql.lua on a finished job whose rows the flusher wrote before its flush.
JOB_IN_SQL = "in_sql"
# What item_result.lua stores per item index: 'ok:<output key>' or 'failed:<error>'.
ITEM_OK, ITEM_FAILED, ITEM_PENDING = "ok", "failed", "pending"


@overload
def ms_to_datetime(value: int) -> datetime: ...
@overload
def ms_to_datetime(value: str | None) -> datetime | None: ...
def ms_to_datetime(value: str | int | None) -> datetime | None:
    """Epoch ms, as the scripts store times, in UTC; '' or None (never set) is None."""
    if value is None or value == "":
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def datetime_to_ms(value: datetime) -> int:
    """The inverse of ms_to_datetime: a cursor's ms must find the same row again."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(milliseconds=1)


@overload
def iso_z(value: datetime) -> str: ...
@overload
def iso_z(value: datetime | None) -> str | None: ...
def iso_z(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a 'Z', as the API shows every time (a naive time is UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_item(value: str) -> tuple[str, str]:
    """(status, detail): the output key of an 'ok' item, the error of a 'failed' one."""
    status, _, detail = value.partition(":")
    return status, detail


def item_rows(outcomes: Mapping[str, str], meta_json: str | None, total: int
              ) -> list[dict[str, Any]]:
    """One row per item, {index, name, content_type, size, status, output_key | error}, from
    the job's meta JSON and its items hash; an item never reported is 'pending'."""
    try:
        meta = json.loads(meta_json) if meta_json else []
    except ValueError:
        meta = []
    if not isinstance(meta, list):
        meta = []
    rows = []
    for index in range(total):
        described = meta[index] if index < len(meta) and isinstance(meta[index], dict) else {}
        row: dict[str, Any] = {
            "index": index, "name": described.get("name"),
            "content_type": described.get("content_type"), "size": described.get("size"),
            "status": ITEM_PENDING,
        }
        outcome = outcomes.get(str(index))
        if outcome is not None:
            status, detail = parse_item(outcome)
            row["status"] = status
            row["output_key" if status == ITEM_OK else "error"] = detail
        rows.append(row)
    return rows


def _int(record: Mapping[str, str], name: str) -> int:
    return int(record.get(name) or 0)


def parse_params(raw: str | None) -> dict[str, Any] | None:
    """The params JSON reserve.lua stored on the job; None for a job from before params."""
    if not raw:
        return None
    try:
        params = json.loads(raw)
    except ValueError:
        return None
    return params if isinstance(params, dict) else None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job hash (tg:{b}:job:<id>), with its items when they were read too."""

    id: str
    user_id: str
    state: JobState
    total_items: int
    done_items: int
    failed_items: int
    price: int
    cost: int
    charged: int
    refunded: int
    rule_id: str | None
    model: str | None
    reason: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    items: list[dict[str, Any]] | None = None
    # Copied at creation (from its rule, or its own body): what its processor receives.
    params: dict[str, Any] | None = None
    # Its own result TTL (POST /jobs `result_ttl_s`); None: TOLLGATE_RESULT_TTL.
    result_ttl_s: int | None = None
    # The job whose failed items it runs again (POST /jobs/{id}/retry).
    retry_of: str | None = None
    # The API key it was made through (None: a JWT).
    key_id: str | None = None

    @classmethod
    def from_redis(cls, job: Mapping[str, str], outcomes: Mapping[str, str] | None = None,
                   meta_json: str | None = None) -> JobRecord | None:
        """None for an empty hash (no such job); items only when `outcomes` is given."""
        if not job:
            return None
        total = _int(job, JOB_TOTAL)
        created_at = ms_to_datetime(job.get("created_at")) or datetime.now(UTC)
        return cls(
            id=job[JOB_ID], user_id=job[JOB_OWNER], state=JobState(job[JOB_STATE]),
            total_items=total, done_items=_int(job, "done"), failed_items=_int(job, "failed"),
            price=_int(job, "price"), cost=_int(job, "cost"), charged=_int(job, "charged"),
            refunded=_int(job, "refunded"), rule_id=job.get("rule_id") or None,
            model=job.get("model") or None, reason=job.get("reason") or None,
            created_at=created_at,
            updated_at=ms_to_datetime(job.get("updated_at")) or created_at,
            started_at=ms_to_datetime(job.get("started_at")),
            finished_at=ms_to_datetime(job.get("finished_at")),
            items=None if outcomes is None else item_rows(outcomes, meta_json, total),
            params=parse_params(job.get("params")),
            result_ttl_s=int(job["result_ttl"]) if job.get("result_ttl") else None,
            retry_of=job.get("retry_of") or None, key_id=job.get("key_id") or None,
        )

    @classmethod
    def reserved(cls, job_id: str, owner: str, *, total: int, price: int, rule_id: str | None,
                 model: str | None, at_ms: int, params: dict[str, Any] | None = None,
                 result_ttl_s: int | None = None, retry_of: str | None = None,
                 state: JobState = JobState.CREATED, key_id: str | None = None) -> JobRecord:
        """The job exactly as reserve.lua has just written it (no need to read it back)."""
        at = ms_to_datetime(at_ms)
        return cls(id=job_id, user_id=owner, state=state, total_items=total,
                   done_items=0, failed_items=0, price=price, cost=total * price, charged=0,
                   refunded=0, rule_id=rule_id or None, model=model or None, reason=None,
                   created_at=at, updated_at=at, started_at=None, finished_at=None,
                   params=params, result_ttl_s=result_ttl_s, retry_of=retry_of or None,
                   key_id=key_id)

    def history_row(self) -> dict[str, Any]:
        """The jobs_log row: the same names, items always there."""
        row = {field.name: getattr(self, field.name) for field in fields(self)}
        row["state"] = str(self.state)
        row["items"] = self.items if self.items is not None else item_rows({}, None,
                                                                           self.total_items)
        # When the flusher deletes its outputs (a job with its own TTL; NULL: the setting's).
        row["results_expire_at"] = (
            self.finished_at + timedelta(seconds=self.result_ttl_s)
            if self.finished_at is not None and self.result_ttl_s is not None else None)
        return row


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user hash (tg:{b}:user:<id>): the plan, the credits and the plan's limits."""

    plan: str
    available: int
    reserved: int
    spent: int
    granted: int
    max_active: int
    max_rules: int

    @classmethod
    def from_redis(cls, user: Mapping[str, str]) -> UserRecord | None:
        if not user:
            return None
        return cls(plan=user["plan"], available=int(user["available"]),
                   reserved=int(user["reserved"]), spent=int(user["spent"]),
                   granted=int(user["granted"]), max_active=int(user["max_active"]),
                   max_rules=int(user["max_rules"]))


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One credit movement as the scripts push it (JSON, `at` in ms); a credit_ledger row."""

    id: str
    user_id: str
    kind: str
    amount: int
    job_id: str | None
    reason: str | None
    at: datetime

    @classmethod
    def from_json(cls, raw: str) -> LedgerEntry:
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> LedgerEntry:
        return cls(id=str(entry["id"]), user_id=str(entry["user_id"]), kind=str(entry["kind"]),
                   amount=int(entry["amount"]), job_id=entry.get("job_id") or None,
                   reason=entry.get("reason") or None,
                   at=ms_to_datetime(int(entry["at"])))

    def history_row(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in fields(self)}
