"""What the API answers, as the client returns it. Lenient on purpose: a field the server
adds later is ignored, so an older client keeps working."""

from __future__ import annotations

from typing import Any

import msgspec

TERMINAL = ("done", "failed", "canceled")


class Item(msgspec.Struct):
    index: int
    name: str | None = None
    status: str = "pending"  # pending | ok | failed
    result_url: str | None = None
    error: str | None = None


class Upload(msgspec.Struct):
    index: int
    url: str
    method: str = "PUT"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    expires_at: str | None = None


class Grant(msgspec.Struct):
    """An open credit grant (GET /me `credits.grants`), in the order a hold draws them."""

    id: str
    kind: str  # paid | promotional
    amount: int
    remaining: int
    expires_at: str | None = None  # RFC 3339; None: it never expires


class Links(msgspec.Struct):
    self: str
    events: str
    cancel: str


class Job(msgspec.Struct):
    id: str
    status: str
    total_items: int = 0
    done_items: int = 0
    failed_items: int = 0
    progress: float = 0.0
    cost: int = 0
    charged: int = 0
    refunded: int = 0
    rule_id: str | None = None
    model: str | None = None
    params: dict[str, Any] = msgspec.field(default_factory=dict)  # copied from its rule or given
    created_at: str | None = None
    updated_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    reason: str | None = None
    queue_position: int | None = None
    links: Links | None = None
    items: list[Item] = msgspec.field(default_factory=list)
    uploads: list[Upload] = msgspec.field(default_factory=list)  # only from create()
    idempotent_replay: bool = False
    retry_of: str | None = None  # the job whose failed items this one runs again
    result_ttl_s: int | None = None
    result_expired: bool = False
    key_id: str | None = None  # the API key that made it (None: a JWT)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class JobPage(msgspec.Struct):
    items: list[Job]
    next_cursor: str | None = None


class JobEvent(msgspec.Struct):
    """One `event: job` of GET /jobs/{id}/events: the job as it is now."""

    id: str | None
    job: Job


def as_job(data: object) -> Job:
    return msgspec.convert(data, Job)


def grants_of(me: dict[str, Any]) -> list[Grant]:
    """The open grants of a GET /me answer."""
    return msgspec.convert(me.get("credits", {}).get("grants", []), list[Grant])
