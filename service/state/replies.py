"""What the scripts answer, typed: Core's return values (service.state.store)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.errors import TollgateError
from service.state.calls import SPECS
from service.state.codes import ERRORS, SUCCESS, Code
from service.state.records import JobRecord, LedgerEntry, UserRecord


@dataclass(frozen=True, slots=True)
class JobProgress:
    code: Code
    state: str
    done: int
    failed: int
    total: int
    charged: int | None = None
    refunded: int | None = None


@dataclass(frozen=True, slots=True)
class ItemReport:
    """One entry of a batched report: the item's outcome under its callback key."""

    callback_key: str
    index: int
    ok: bool
    detail: str  # the output key, or the error
    # A failure the input caused after the work was done: charged when the job's model
    # bills input errors (lua/includes/count_items.lua).
    billable: bool = False

    @property
    def flag(self) -> str:
        return item_flag(self.ok, self.billable)


def item_flag(ok: bool, billable: bool = False) -> str:
    """An item outcome as item_result/items_result take it: '1' ok, '0' failed, '2' failed
    and billable."""
    if ok:
        return "1"
    return "2" if billable else "0"


@dataclass(frozen=True, slots=True)
class BatchProgress:
    code: Code
    state: str
    done: int
    failed: int
    total: int
    counted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class MoneySnapshot:
    """What Redis holds of one user's money, read at one instant: the user record (None when
    Redis has none), its jobs still in Redis, and its ledger entries not yet trimmed."""

    user: UserRecord | None
    jobs: list[JobRecord]
    pending: list[LedgerEntry]


@dataclass(frozen=True, slots=True)
class Balance:
    code: Code
    available: int
    reserved: int
    spent: int
    granted: int


@dataclass(frozen=True, slots=True)
class SlotUse:
    code: Code
    used: int
    limit: int


@dataclass(frozen=True, slots=True)
class DueWork:
    expired_holds: list[str]
    expired_leases: list[str]
    stale_queued: list[str]
    due_flushes: list[str]


@dataclass(frozen=True, slots=True)
class FlushAttempt:
    """A record SQL refused: its attempts so far, and whether it may be tried again."""

    attempts: int
    first_failed_ms: int
    exhausted: bool


def check_reply(reply: list[Any], script: str) -> Code:
    """The reply's code when it is a success, else the matching TollgateError raised."""
    code = Code(reply[0])
    if code in SUCCESS:
        return code
    error: type[TollgateError] = ERRORS[code]
    detail = f"{script}: {code.value}" + (f" ({reply[1]})" if len(reply) > 1 else "")
    extra = {"job_status": reply[1]} if code is Code.INVALID_TRANSITION and len(reply) > 1 else {}
    raise error(detail, reply=reply[1:], **extra)


def job_progress(reply: list[Any], script: str) -> JobProgress:
    """{code, state, done, failed, total[, charged, refunded]}, as the job scripts answer."""
    code = check_reply(reply, script)
    fields = SPECS[script].named(reply)
    charged, refunded = fields.get("charged"), fields.get("refunded")
    return JobProgress(code, fields["state"], int(fields["done"]), int(fields["failed"]),
                       int(fields["total"]), None if charged is None else int(charged),
                       None if refunded is None else int(refunded))
