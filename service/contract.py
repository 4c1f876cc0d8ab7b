"""The wire contract between the API and the GPU workers: nothing else crosses it.

A batch reaches a worker as an RQ job on a tollgate queue (a `BatchPayload` as JSON,
deterministic RQ id); the worker answers through `POST /jobs/{id}/callback` with a per-job
token and a `CallbackIn` report: one event, or a batch's results (`event: "items"`, a list of
`ItemReportIn`). The API validates the report with these Structs (they are its request
schema), the dispatcher builds the payload with them, and the workers decode and encode with
them; each limit of the wire is stated here once (the Lua scripts get theirs through
LUA_CONSTANTS, `-- @const NAME`). Workers import this module and `service.settings`, never
the rest of `service`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal

import msgspec
import redis
from rq import Queue
from rq.serializers import JSONSerializer

JOB_FUNCTION = "workers.jobs.process_batch"
SERIALIZER = JSONSerializer
# Stored error texts are cut here, on both sides of the wire.
MAX_ERROR_CHARS = 1000
# Entries of one batched report (`event: "items"`); a bigger batch sends several.
MAX_REPORT_ITEMS = 1000
# A storage key the worker reports for an output.
MAX_OUTPUT_KEY_CHARS = 1024
# An Idempotency-Key (a header of the REST API, and the key of every report entry).
IDEMPOTENCY_KEY_MAX = 200
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]{1,200}$(?!\n)"
# Constants the Lua scripts read (`-- @const NAME` in a script: service.state.scripts).
LUA_CONSTANTS: Mapping[str, int] = MappingProxyType({"MAX_REPORT_ITEMS": MAX_REPORT_ITEMS})

IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=IDEMPOTENCY_KEY_MAX,
                                             pattern=IDEMPOTENCY_KEY_PATTERN)]
OutputKey = Annotated[str, msgspec.Meta(max_length=MAX_OUTPUT_KEY_CHARS)]
ItemIndex = Annotated[int, msgspec.Meta(ge=0)]


# Answers to a callback that mean "this job no longer takes reports: stop working on it".
# 409 invalid_transition: it is canceled or finished; 404: it was also flushed to history.
CLOSED_STATUSES = frozenset({404, 409})
CLOSED_CODES = frozenset({"invalid_transition", "not_found"})


def is_closed_answer(status: int, code: object) -> bool:
    return status in CLOSED_STATUSES and code in CLOSED_CODES


def input_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/in/{index}"


def output_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/out/{index}"


def job_files(job_id: str) -> str:
    """The folder (key prefix) of every file of a job: its inputs and its outputs."""
    return f"jobs/{job_id}/"


def job_of_input_key(key: str) -> str | None:
    """The job id of an input key (`jobs/<id>/in/<index>`); None for any other key."""
    parts = key.split("/")
    if len(parts) == 4 and parts[0] == "jobs" and parts[2] == "in" and parts[1]:
        return parts[1]
    return None


def item_callback_key(job_id: str, index: int) -> str:
    """Same key on every attempt at this item, whichever batch or worker sends it."""
    return f"{job_id}:item:{index}"


# `<_io.BytesIO object at 0x7f...>`: a repr says nothing to a client and shows heap addresses.
_REPR_WITH_ADDRESS = re.compile(r"\s*<[^<>]*\bat 0x[0-9A-Fa-f]+>")


def clean_error(text: str) -> str:
    """A worker's error as it may be stored: no control characters (PostgreSQL refuses NUL),
    no object reprs with heap addresses, bounded length."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return _REPR_WITH_ADDRESS.sub("", cleaned)[:MAX_ERROR_CHARS]


def describe_error(what: str, exc: BaseException) -> str:
    """An item error for the client: what failed and the exception's own words, cleaned."""
    message = clean_error(str(exc)).strip()
    return f"{what}: {type(exc).__name__}" + (f": {message}" if message else "")


class BatchItem(msgspec.Struct, frozen=True):
    """One item of a batch, as the worker gets it."""

    index: ItemIndex
    name: str
    content_type: str
    input_url: str
    output_url: str
    output_key: OutputKey
    # The size the client declared for the input (bytes; storage refuses a larger upload):
    # the worker groups a batch by it (TOLLGATE_WORKER_MAX_BATCH_BYTES). None: not known (a
    # batch enqueued before it was sent), counted as 0.
    size: Annotated[int, msgspec.Meta(ge=0)] | None = None


class BatchPayload(msgspec.Struct, frozen=True):
    """The one argument of the RQ job `JOB_FUNCTION` (as JSON: `to_builtins`)."""

    job_id: str
    batch_no: Annotated[int, msgspec.Meta(ge=0)]
    rq_job_id: str
    callback_url: str
    callback_token: str
    lease_ttl_s: Annotated[float, msgspec.Meta(gt=0)]
    items: list[BatchItem]
    # The job's, the same for every batch and item of it (docs/models.md, "Params and rule
    # presets"). A batch enqueued before params existed has none.
    params: dict[str, Any] = msgspec.field(default_factory=dict)


def read_batch(payload: object) -> BatchPayload:
    """The payload a worker took off the queue; msgspec.ValidationError when it is not one."""
    return msgspec.convert(payload, BatchPayload)


class ItemReportIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One entry of a batched report (`event: "items"`)."""

    index: ItemIndex
    ok: bool
    idempotency_key: IdempotencyKey
    output_key: OutputKey | None = None
    error: str | None = None
    # A failure the input caused after the work was done (`Output.failed(..., billable=True)`):
    # charged when the job's model has bill_input_errors. Ignored on an ok entry.
    billable: bool = False


class CallbackIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A worker's report: one event, or (`items`) the results of a batch's items."""

    event: Literal["started", "item", "items", "failed", "heartbeat"]
    # Required by every event but "items", whose entries carry one each.
    idempotency_key: IdempotencyKey | None = None
    item_index: ItemIndex | None = None
    ok: bool | None = None
    output_key: OutputKey | None = None
    error: str | None = None
    billable: bool = False
    items: Annotated[list[ItemReportIn], msgspec.Meta(min_length=1,
                                                      max_length=MAX_REPORT_ITEMS)] | None = None


def frozen_params(params: Any) -> Any:
    """A job's params as its processor sees them: objects become read-only mappings
    (types.MappingProxyType), arrays tuples, all the way down; one for all its items."""
    if isinstance(params, Mapping):
        return MappingProxyType({str(k): frozen_params(v) for k, v in params.items()})
    if isinstance(params, list | tuple):
        return tuple(frozen_params(v) for v in params)
    return params


def rq_job_id(job_id: str, batch_no: int) -> str:
    return f"tg-{job_id}-{batch_no}"


def make_queue(connection: redis.Redis, name: str) -> Queue:
    """The queue with tollgate's serializer; use it on both the enqueue and worker side."""
    return Queue(name, connection=connection, serializer=SERIALIZER)


# A worker took a batch from the queue: the dispatcher (service/flusher/dispatcher.py) waits
# on this list, on RQ's Redis, to fill the queue again, instead of polling its length. It
# holds at most one element; a worker that sends nothing (plain `rq worker`) only makes the
# refill wait for the dispatcher's next timed pass.
ROOM_KEY = "rq:tollgate:room:%s"


def signal_room(connection: redis.Redis, queue_name: str) -> None:
    """Tells the dispatcher the queue has room again: one round trip, best effort."""
    key = ROOM_KEY % queue_name
    try:
        pipe = connection.pipeline(transaction=False)
        pipe.lpush(key, 1)
        pipe.ltrim(key, 0, 0)
        pipe.execute()
    except redis.RedisError:  # the refill then waits for the dispatcher's timed pass
        pass


def batch_payload(
    *,
    job_id: str,
    batch_no: int,
    callback_url: str,
    callback_token: str,
    lease_ttl_s: int,
    items: list[BatchItem],
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The payload of one batch, as the JSON-ready arguments RQ stores."""
    payload = BatchPayload(job_id=job_id, batch_no=batch_no, rq_job_id=rq_job_id(job_id, batch_no),
                           callback_url=callback_url, callback_token=callback_token,
                           lease_ttl_s=lease_ttl_s, items=list(items), params=dict(params or {}))
    built: dict[str, Any] = msgspec.to_builtins(payload)
    return built


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.lru_cache(maxsize=8)
def _callback_key(secret: str) -> hmac.HMAC:
    """The secret's keyed HMAC state, made once: each token copies it (the key's padding and
    two hash blocks are not redone on every callback)."""
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def _callback_mac(secret: str, job_id: str, owner: str) -> bytes:
    mac = _callback_key(secret).copy()
    mac.update(f"callback\n{job_id}\n{owner}".encode())
    return mac.digest()


def callback_token(secret: str, job_id: str, owner: str) -> str:
    """Bound to one job and its owner, so the callback learns the owner from the token."""
    return f"{_b64(owner.encode())}.{_b64(_callback_mac(secret, job_id, owner))}"


def verify_callback_token(secret: str, job_id: str, token: str) -> str | None:
    """The job's owner when the token was issued for this job, else None."""
    owner_part, sep, mac_part = token.partition(".")
    if not sep or not owner_part or not mac_part:
        return None
    try:
        owner = _unb64(owner_part).decode()
        mac = _unb64(mac_part)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(mac, _callback_mac(secret, job_id, owner)):
        return None
    return owner
