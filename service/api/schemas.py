"""Request bodies of the REST API and the callback's answer, as msgspec Structs Litestar
validates."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from service.jobs.schemas import (
    NO_CONTROL_PATTERN,
    ModelName,
    Name,
    Priority,
    WebhookIn,
    check_params,
)

# Bounds at the edge (docs/reference.md renders them). A user id never holds `:`, `{` or
# `}`, so it can never spell another user's Redis keys; stored text holds no control
# characters (PostgreSQL text cannot hold NUL). The patterns are shared with the path,
# query and header parameters of service.api.params, so OpenAPI shows them all. Each ends
# in `$(?!\n)`: Python's `$` (msgspec's) also matches before a final newline; ECMA's does not.
USER_ID_PATTERN = r"^[A-Za-z0-9._@|+-]{1,128}$(?!\n)"
USER_ID_MAX = 128
UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=USER_ID_MAX,
                                     pattern=USER_ID_PATTERN)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=NO_CONTROL_PATTERN)]
PlanName = Literal["free", "pro"]


class RuleCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A processing preset: no model is the default model (fixed when a job uses it)."""

    name: Name
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    model: ModelName | None = None
    webhook: WebhookIn | None = None
    # The priority its jobs take unless they name their own (docs/scheduling.md).
    priority: Priority | None = None

    def __post_init__(self) -> None:
        check_params(self.params)


class RulePatch(msgspec.Struct, forbid_unknown_fields=True):
    """PATCH /rules/{id}: the fields given replace the rule's; `model` or `webhook` null
    clears it (the default model, no webhook)."""

    name: Name | UnsetType = UNSET
    params: dict[str, Any] | UnsetType = UNSET
    model: ModelName | UnsetType | None = UNSET
    webhook: WebhookIn | UnsetType | None = UNSET
    priority: Priority | UnsetType | None = UNSET  # null: normal

    def __post_init__(self) -> None:
        if not isinstance(self.params, UnsetType):
            check_params(self.params)


class CallbackOut(msgspec.Struct):
    duplicate: bool
    status: str
    done_items: int
    failed_items: int


class ItemsCallbackOut(msgspec.Struct):
    """The answer to a batched report: how many entries counted now, how many were known."""

    counted: int
    duplicates: int
    status: str
    done_items: int
    failed_items: int


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    id: UserId
    plan: PlanName = "free"
    credits: Annotated[int, msgspec.Meta(ge=0, le=10**12)] = 0


class PlanChange(msgspec.Struct, forbid_unknown_fields=True):
    plan: PlanName


GrantKind = Literal["paid", "promotional"]


class CreditGrant(msgspec.Struct, forbid_unknown_fields=True):
    amount: Annotated[int, msgspec.Meta(ge=-(10**12), le=10**12)]
    reason: Reason
    # A positive amount only: its kind, and when what is left of it expires (RFC 3339 with
    # an offset, in the future; none: never).
    kind: GrantKind = "paid"
    expires_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


Scope = Literal["jobs:read", "jobs:write", "rules:read", "rules:write", "keys:write"]
KeyPeriod = Literal["day", "month"]


class SpendCap(msgspec.Struct, forbid_unknown_fields=True):
    credits: Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
    period: KeyPeriod


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    """POST /me/keys. No `scopes`: every scope but keys:write."""

    name: Name
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=5)] | None = None
    spend_cap: SpendCap | None = None
    expires_at: datetime | None = None


# ---- Response bodies --------------------------------------------------------------------
# The services build plain dicts; the routes convert them with `body()` into these Structs,
# which OpenAPI shows. Strict on purpose: a key a service adds but no Struct declares is a
# loud error (a 500 in tests), never a field silently dropped. To add a response field,
# declare it here: `X | UnsetType = UNSET` for one that is sometimes absent from the JSON.

JobStatus = Literal["created", "uploaded", "queued", "running", "done", "failed", "canceled"]
S = TypeVar("S", bound=msgspec.Struct)


def body(cls: type[S], data: Any) -> S:
    return msgspec.convert(data, cls)


class Credits(msgspec.Struct, forbid_unknown_fields=True):
    available: int
    reserved: int
    spent: int
    granted: int


class GrantView(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    kind: GrantKind
    amount: int
    remaining: int
    expires_at: str | None


class MeCredits(Credits, forbid_unknown_fields=True):
    grants: list[GrantView]  # the open grants, in the order a hold draws them


class Concurrency(msgspec.Struct, forbid_unknown_fields=True):
    active: int
    limit: int


class RuleSlots(msgspec.Struct, forbid_unknown_fields=True):
    used: int
    limit: int


class MeView(msgspec.Struct, forbid_unknown_fields=True):
    user_id: str
    plan: str
    credits: MeCredits
    concurrency: Concurrency
    rule_slots: RuleSlots


class CreditBalance(msgspec.Struct, forbid_unknown_fields=True):
    user_id: str
    duplicate: bool  # True when this Idempotency-Key was applied before: nothing changed
    credits: Credits


class WebhookView(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    events: list[str]


class RuleView(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    name: str
    params: dict[str, Any]
    created_at: str
    model: str | UnsetType | None = UNSET
    webhook: WebhookView | UnsetType | None = UNSET
    priority: Priority | UnsetType = UNSET


class RuleList(msgspec.Struct, forbid_unknown_fields=True):
    items: list[RuleView]


class ItemView(msgspec.Struct, forbid_unknown_fields=True):
    index: int
    name: str | None
    status: Literal["pending", "ok", "failed"]
    result_url: str | UnsetType = UNSET  # a signed download URL, while status is ok
    error: str | UnsetType = UNSET


class JobLinks(msgspec.Struct, forbid_unknown_fields=True):
    self: str
    events: str
    cancel: str


class JobView(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    status: JobStatus
    total_items: int
    done_items: int
    failed_items: int
    progress: float  # (done + failed) / total, 0..1
    cost: int  # credits held at creation: items x price
    charged: int
    refunded: int
    rule_id: str | None
    created_at: str | None
    updated_at: str | None
    started_at: str | None
    finished_at: str | None
    reason: str | None
    model: str | UnsetType | None = UNSET
    params: dict[str, Any] | UnsetType = UNSET
    queue_position: int | UnsetType | None = UNSET
    links: JobLinks | UnsetType = UNSET
    webhook: WebhookView | UnsetType | None = UNSET
    # True once the outputs are deleted (result_ttl_s after finished_at): no result_url.
    result_expired: bool | UnsetType = UNSET
    result_ttl_s: int | UnsetType = UNSET  # the job's own, or TOLLGATE_RESULT_TTL
    retry_of: str | UnsetType | None = UNSET  # the job whose failed items this one runs
    key_id: str | UnsetType | None = UNSET  # the API key that made it (null: a JWT)
    # Set while the job waits for a model whose processor cannot run: why, one line.
    model_unavailable: str | UnsetType = UNSET
    # A queued job: true while no live worker serves its model (docs/scheduling.md).
    waiting_for_worker: bool | UnsetType = UNSET
    items: list[ItemView] | UnsetType = UNSET  # on a single job, not in lists


class Upload(msgspec.Struct, forbid_unknown_fields=True):
    index: int
    url: str
    method: str
    headers: dict[str, str]  # send exactly these with the upload
    expires_at: str | None


class JobCreated(JobView, kw_only=True, forbid_unknown_fields=True):
    uploads: list[Upload]  # one per item while the job is created, else empty
    idempotent_replay: bool  # True when an earlier request with this Idempotency-Key made it


class JobPage(msgspec.Struct, forbid_unknown_fields=True):
    items: list[JobView]
    next_cursor: str | None


class Status(msgspec.Struct, forbid_unknown_fields=True):
    status: str


class ModelView(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    description: str
    price_per_item: int
    max_items: int
    content_types: list[str]
    default: bool
    params_schema: dict[str, Any] | None = None  # a JSON Schema for job and rule params
    # False when its processor cannot run (not importable where the work runs): jobs for it
    # are refused, 503 model_unavailable, and unavailable_reason says why.
    available: bool = True
    unavailable_reason: str | UnsetType = UNSET
    workers: int = 0  # live workers serving its queue (docs/scheduling.md)
    queued_items: int = 0  # items executed and waiting in tollgate's dispatch order


class ModelList(msgspec.Struct, forbid_unknown_fields=True):
    items: list[ModelView]


class Problem(msgspec.Struct):
    """An RFC 9457 problem document (application/problem+json); `code` is the stable part.

    Some codes carry extra members, declared below; others may be added."""

    type: str
    title: str
    status: int
    code: str
    detail: str | UnsetType = UNSET
    errors: list[dict[str, Any]] | UnsetType = UNSET  # validation_error: what was wrong where
    missing: list[int] | UnsetType = UNSET  # uploads_missing: the item indexes not uploaded
    job_status: str | UnsetType = UNSET  # invalid_transition: the job's status now
    used: int | UnsetType = UNSET  # rule_slots_exhausted
    limit: int | UnsetType = UNSET  # rule_slots_exhausted


class WebhookDelivery(msgspec.Struct, forbid_unknown_fields=True):
    id: str  # the webhook-id header: the same on every attempt of one event
    type: Literal["job.started", "job.progress", "job.completed"]
    attempts: int
    last_status: int | None  # the receiver's HTTP status; null before it or without answer
    delivered_at: str | None
    next_attempt_at: str | None  # null once delivered or given up
    gave_up_at: str | None  # set when the retries (at least 24 h of them) ran out
    redelivery_of: str | None = None  # the delivery a POST .../redeliver repeated


class WebhookLog(msgspec.Struct, forbid_unknown_fields=True):
    items: list[WebhookDelivery]


class KeyView(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    name: str
    prefix: str  # `tg_<id>_`: how the secret starts
    scopes: list[str]
    spend_cap: SpendCap | None
    expires_at: str | None
    created_at: str
    spent_this_period: int | UnsetType = UNSET  # in the list: held + charged this period
    last_used_at: str | UnsetType | None = UNSET  # in the list
    secret: str | UnsetType = UNSET  # in the create answer only: shown once


class KeyList(msgspec.Struct, forbid_unknown_fields=True):
    items: list[KeyView]


class WebhookSecret(msgspec.Struct, forbid_unknown_fields=True):
    secret: str  # whsec_<base64>: the HMAC key is the base64-decoded part


# ---- Balance alerts and the account webhook (docs/billing.md) ----------------------------

AccountEvent = Literal["credits.low", "credits.exhausted", "credits.expiring"]
MAX_LOW_BALANCE = 1_000_000_000_000


class AccountWebhookIn(msgspec.Struct, forbid_unknown_fields=True):
    """PUT /me/webhook: where the account's events go; the address is checked like a job's."""
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048,
                                     pattern=r"^https?://[^\x00-\x20\x7f]+$(?!\n)")]
    events: Annotated[list[AccountEvent], msgspec.Meta(min_length=1, max_length=3)]


class AccountWebhook(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    events: list[AccountEvent]


class AlertsIn(msgspec.Struct, forbid_unknown_fields=True):
    """PUT /me/alerts: `low_balance` null turns the alert off. Required: `{}` is refused."""
    low_balance: Annotated[int, msgspec.Meta(ge=1, le=MAX_LOW_BALANCE)] | None


class Alerts(msgspec.Struct, forbid_unknown_fields=True):
    low_balance: int | None


class AccountEventData(msgspec.Struct, forbid_unknown_fields=True):
    user_id: str
    available: int
    low_balance: int | None
    grant: str | UnsetType = UNSET


class AccountDelivery(msgspec.Struct, forbid_unknown_fields=True):
    id: str  # the webhook-id header
    type: AccountEvent
    attempts: int
    last_status: int | None
    delivered_at: str | None
    next_attempt_at: str | None
    gave_up_at: str | None
    data: AccountEventData
    redelivery_of: str | None = None


class AccountDeliveryLog(msgspec.Struct, forbid_unknown_fields=True):
    items: list[AccountDelivery]
