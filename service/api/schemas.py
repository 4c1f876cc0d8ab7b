"""Request bodies of the REST API and the callback's answer, as msgspec Structs Litestar
validates."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]
ContentType = Annotated[
    str, msgspec.Meta(max_length=127, pattern=r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")
]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@:-]+$")]
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
PlanName = Literal["free", "pro"]


class ItemIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    content_type: ContentType
    size: Annotated[int, msgspec.Meta(ge=1)]


class JobCreate(msgspec.Struct, forbid_unknown_fields=True):
    items: Annotated[list[ItemIn], msgspec.Meta(min_length=1)]
    rule_id: Id | None = None


class RuleCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    params: dict[str, Any] = msgspec.field(default_factory=dict)


class CallbackIn(msgspec.Struct, forbid_unknown_fields=True):
    idempotency_key: IdempotencyKey
    event: Literal["started", "item", "failed", "heartbeat"]
    item_index: Annotated[int, msgspec.Meta(ge=0)] | None = None
    ok: bool | None = None
    output_key: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    error: str | None = None


class CallbackOut(msgspec.Struct):
    duplicate: bool
    status: str
    done_items: int
    failed_items: int


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    id: Id
    plan: PlanName = "free"
    credits: Annotated[int, msgspec.Meta(ge=0, le=10**12)] = 0


class PlanChange(msgspec.Struct, forbid_unknown_fields=True):
    plan: PlanName


class CreditGrant(msgspec.Struct, forbid_unknown_fields=True):
    amount: Annotated[int, msgspec.Meta(ge=-(10**12), le=10**12)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
