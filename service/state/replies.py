"""What the scripts answer, typed: Core's return values (service.state.store)."""

from __future__ import annotations

from dataclasses import dataclass

from service.state.codes import Code
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
