"""Job logic behind the routes: create, read (live or history, one shape), dispatch to RQ."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import re
from typing import Any

import anyio
import msgspec

from service.api.rules import Preset, job_preset
from service.api.schemas import ItemIn, JobCreate
from service.api.users import as_known_user, rebuild_if_lost
from service.contract import input_key, output_key
from service.dispatch import dispatch, model_gone
from service.errors import (
    BadArgument,
    IdempotencyKeyReused,
    InvalidTransition,
    NotFound,
    TollgateError,
    UploadsMissing,
)
from service.history.models import JobLog
from service.history.queries import history_job
from service.models import Model
from service.retention import results_expired
from service.runtime import Runtime
from service.state.clients import UNREACHABLE_ERRORS, RedisError
from service.state.codes import Code
from service.state.fsm import TERMINAL, JobState
from service.state.outbox import Outbox
from service.state.records import (
    ITEM_OK,
    ITEM_PENDING,
    JobRecord,
    iso_z,
)
from service.state.store import now_ms
from service.webhooks import EVENTS, resolve_allowed

log = logging.getLogger(__name__)

PRESIGN_IN_THREAD_ABOVE = 32
# What leaves a queued job's place in line unread (null) rather than failing its view; the
# unreachable errors include the Cluster's own, which are not all RedisErrors.
POSITION_UNREAD: tuple[type[Exception], ...] = (RedisError, OSError, *UNREACHABLE_ERRORS)


def _json(value: Any) -> str:
    """Compact JSON (msgspec: a fifth of json.dumps's time for a job's meta and params)."""
    return msgspec.json.encode(value).decode()


def body_hash(body: JobCreate) -> str:
    return hashlib.sha256(msgspec.json.encode(body)).hexdigest()


async def _presign_uploads(
    rt: Runtime, job_id: str, meta: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    def sign() -> list[dict[str, Any]]:
        out = []
        for index, item in enumerate(meta):
            up = rt.storage.presign_upload(
                input_key(job_id, index), item["content_type"], item["size"],
                rt.settings.upload_url_ttl,
            )
            out.append({"index": index, "url": up.url, "method": up.method,
                        "headers": up.headers, "expires_at": iso_z(up.expires_at)})
        return out

    if len(meta) > PRESIGN_IN_THREAD_ABOVE:
        return await anyio.to_thread.run_sync(sign)
    return sign()


def _item_meta(body: JobCreate) -> list[dict[str, Any]]:
    return [{"name": i.name, "content_type": i.content_type, "size": i.size} for i in body.items]


def model_for_items(model: Model, items: list[ItemIn]) -> Model:
    """The model when it takes these items: its item count and content types, else 422."""
    if len(items) > model.max_items:
        raise BadArgument(f"model {model.name!r} takes at most {model.max_items} items per job")
    for index, item in enumerate(items):
        if not model.accepts(item.content_type):
            raise BadArgument(
                f"model {model.name!r} does not take {item.content_type!r} (item {index}); "
                f"it takes {', '.join(model.content_types)}", field=f"items[{index}].content_type")
    return model


async def _prepare(rt: Runtime, user_id: str, body: JobCreate
                   ) -> tuple[Model, Preset, str, tuple[str, ...]]:
    """The rule's model, params and webhook, with the job's own fields over them; copied
    onto the job at reserve, so a later edit or delete of the rule changes nothing there."""
    settings = rt.settings
    preset: Preset = await job_preset(rt, user_id, body)
    model = model_for_items(rt.models.get(preset.model), body.items)
    rt.models.check_params(model, preset.params)
    rt.models.check_available(model)  # 503 model_unavailable: no worker here can run it
    for index, item in enumerate(body.items):
        if item.size > model.max_item_bytes:
            raise BadArgument(f"item {item.name!r} is larger than {model.max_item_bytes} bytes, "
                              f"model {model.name!r}'s max_item_bytes",
                              field=f"items[{index}].size")
    webhook_url, webhook_events = "", ()  # type: tuple[str, tuple[str, ...]]
    if preset.webhook is not None:  # 422 webhook_url_not_allowed for a private address
        await resolve_allowed(preset.webhook.url, settings.webhook_allow_private)
        webhook_url = preset.webhook.url
        webhook_events = tuple(event for event in EVENTS if event in preset.webhook.events)
    return model, preset, webhook_url, webhook_events


async def _replay(rt: Runtime, user_id: str, idempotency_key: str | None, digest: str,
                  body: JobCreate) -> dict[str, Any] | None:
    """The answer to a retried create whose Idempotency-Key already made a job, else None."""
    if idempotency_key is None:
        return None
    earlier = await rt.core.idempotent_job(user_id, idempotency_key)
    if earlier is None:
        return None
    if earlier[1] != digest:
        raise IdempotencyKeyReused(f"the Idempotency-Key is job {earlier[0]}'s")
    view = await get_job(rt, user_id, earlier[0], with_items=False)
    return await _with_uploads(rt, view, _item_meta(body), replay=True)


async def create_job(
    rt: Runtime, user_id: str, body: JobCreate, idempotency_key: str | None
) -> dict[str, Any]:
    digest = body_hash(body)
    try:
        model, preset, webhook_url, webhook_events = await _prepare(rt, user_id, body)
    except TollgateError:
        # reserve.lua answers a replay itself; this read is for a replay whose preparation
        # no longer passes (the rule deleted, the model removed since the first request).
        replayed = await _replay(rt, user_id, idempotency_key, digest, body)
        if replayed is None:
            raise
        return replayed
    settings = rt.settings
    meta = _item_meta(body)
    job_id = rt.core.keys.new_job_id(user_id)
    created_ms = now_ms()
    reserve = functools.partial(
        rt.core.reserve, job_id=job_id, user_id=user_id, total=len(meta), at_ms=created_ms,
        price=model.price_per_item, model=model.name, hold_ttl_ms=settings.hold_ttl * 1000,
        meta_json=_json(meta), rule_id=body.rule_id or "", idempotency_key=idempotency_key,
        body_hash=digest, idempotency_ttl_ms=settings.idempotency_ttl * 1000,
        webhook_url=webhook_url, webhook_events=webhook_events,
        params_json=_json(preset.params), bill_input_errors=model.bill_input_errors,
        result_ttl_s=body.result_ttl_s,
    )
    code, job_id = await as_known_user(rt, user_id, reserve)
    if code is Code.OK:  # the script wrote exactly this: no need to read it back
        view = job_view(rt, JobRecord.reserved(
            job_id, user_id, total=len(meta), price=model.price_per_item,
            rule_id=body.rule_id, model=model.name, at_ms=created_ms, params=preset.params,
            result_ttl_s=body.result_ttl_s), with_items=False)
    else:
        view = await get_job(rt, user_id, job_id, with_items=False)
    return await _with_uploads(rt, view, meta, replay=code is Code.ALREADY)


async def _with_uploads(rt: Runtime, view: dict[str, Any], meta: list[dict[str, Any]], *,
                        replay: bool) -> dict[str, Any]:
    """The create answer: a created job's upload URLs (none once uploaded)."""
    created = view["status"] == JobState.CREATED
    view["uploads"] = await _presign_uploads(rt, view["id"], meta) if created else []
    view["idempotent_replay"] = replay
    return view


def _item_view(rt: Runtime, job_id: str, item: dict[str, Any], result_expired: bool
               ) -> dict[str, Any]:
    shown: dict[str, Any] = {"index": item["index"], "name": item.get("name"),
                             "status": item.get("status", ITEM_PENDING)}
    if shown["status"] == ITEM_OK and not result_expired:
        shown["result_url"] = rt.storage.presign_download(
            item.get("output_key") or output_key(job_id, item["index"]),
            rt.settings.result_url_ttl)
    elif item.get("error"):
        shown["error"] = item["error"]
    return shown


def job_links(rt: Runtime, job_id: str) -> dict[str, str]:
    base = f"{rt.settings.public_url.rstrip('/')}/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}


def job_view(rt: Runtime, job: JobRecord | JobLog, with_items: bool) -> dict[str, Any]:
    """A live job (Redis) and a job in history (SQL) carry the same names: one view."""
    done, failed, total = job.done_items, job.failed_items, job.total_items
    view: dict[str, Any] = {
        "id": job.id, "status": str(job.state), "total_items": total, "done_items": done,
        "failed_items": failed, "progress": round((done + failed) / total, 4) if total else 0.0,
        "cost": job.cost, "charged": job.charged, "refunded": job.refunded,
        "rule_id": job.rule_id, "model": job.model, "params": job.params or {},
        "created_at": iso_z(job.created_at),
        "updated_at": iso_z(job.updated_at), "started_at": iso_z(job.started_at),
        "finished_at": iso_z(job.finished_at), "reason": job.reason,
        "queue_position": None, "links": job_links(rt, job.id),
        # Outputs live result_ttl_s (its own, or TOLLGATE_RESULT_TTL) after the job
        # finished; then no result_url.
        "result_expired": results_expired(
            job.finished_at, job.results_deleted_at if isinstance(job, JobLog) else None,
            job.result_ttl_s or rt.settings.result_ttl),
        "result_ttl_s": job.result_ttl_s or rt.settings.result_ttl, "retry_of": job.retry_of,
    }
    unavailable = rt.models.unavailable(job.model)
    if unavailable is not None and job.finished_at is None:  # it waits for a worker
        view["model_unavailable"] = unavailable
    if with_items and job.items is not None:
        view["items"] = [_item_view(rt, job.id, item, view["result_expired"])
                         for item in job.items]
    return view


async def with_queue_position(rt: Runtime, view: dict[str, Any]) -> dict[str, Any]:
    """A queued job's place in line (the view of any other has null): a live read."""
    if view["status"] == JobState.QUEUED:
        try:
            view["queue_position"] = await Outbox(rt.core).queue_position(view["id"])
        except POSITION_UNREAD as error:
            # It reads every bucket in use: one node away (a Cluster failover) would fail
            # every queued job's view. The place in line is a hint; the view stands without.
            log.warning("job %s: queue position unread: %s", view["id"],
                        type(error).__name__)
    return view


async def get_job(rt: Runtime, user_id: str, job_id: str, *, with_items: bool = True
                  ) -> dict[str, Any]:
    if rt.core.keys.job(job_id) is None:
        raise NotFound(f"no job {job_id!r}")
    job = await (rt.core.job_snapshot(job_id) if with_items else rt.core.job(job_id))
    if job is not None:
        if job.user_id != user_id:
            raise NotFound(f"no job {job_id!r}")
        return await with_queue_position(rt, job_view(rt, job, with_items))
    async with rt.sessions() as session:
        row = await history_job(session, user_id, job_id)
    if row is None and await rebuild_if_lost(rt, user_id):  # its lost jobs get their rows
        async with rt.sessions() as session:
            row = await history_job(session, user_id, job_id)
    if row is None:
        raise NotFound(f"no job {job_id!r}")
    return job_view(rt, row, with_items)


def encode_cursor(created_ms: int, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_ms}:{job_id}".encode()).decode().rstrip("=")


# A cursor is `<created ms>:<job id>`: checked whole before it reaches a query (a NUL, a
# year past 9999 or a 5000-digit number are 422s, not 500s).
_CURSOR = re.compile(r"([0-9]{1,14}):([0-9a-hjkmnp-tv-z]{26}-[0-9]{1,5})")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadArgument("cursor is not one this API handed out") from exc
    match = _CURSOR.fullmatch(raw)
    if match is None:
        raise BadArgument("cursor is not one this API handed out")
    return int(match[1]), match[2]


# A retry answers the state (API.md): confirm or execute that already took effect, or
# whose moment has passed, answers the job where it is (live, or its history row once
# flushed), never a 409 for the client's own earlier call; 404 when there is no such job.
async def confirm_upload(rt: Runtime, user_id: str, job_id: str) -> dict[str, Any]:
    job = await rt.core.job(job_id)
    if job is None or job.user_id != user_id:  # flushed (final), or none of the caller's
        return await get_job(rt, user_id, job_id)
    if job.state == JobState.CREATED:
        keys = [input_key(job_id, i) for i in range(job.total_items)]
        missing = await rt.storage.missing(keys)
        if missing:
            raise UploadsMissing(f"{len(missing)} of {len(keys)} uploads are missing",
                                 missing=missing)
        # Canceled, expired or flushed since the read: answered below as it now is.
        with contextlib.suppress(InvalidTransition, NotFound):
            await rt.core.transition(job_id, JobState.CREATED, JobState.UPLOADED,
                                     owner=user_id)
    return await get_job(rt, user_id, job_id)


async def execute(rt: Runtime, user_id: str, job_id: str) -> dict[str, Any]:
    try:  # the script finds the caller's live job, or says there is none
        await rt.core.transition(job_id, JobState.UPLOADED, JobState.QUEUED, owner=user_id)
    except NotFound:  # flushed (final), or none of the caller's
        return await get_job(rt, user_id, job_id)
    except InvalidTransition as refused:
        if refused.extra.get("job_status") == JobState.CREATED:  # a true conflict
            raise
        return await get_job(rt, user_id, job_id)  # running or final: no dispatch
    job = await rt.core.job_snapshot(job_id)  # the one read: for the workers and the answer
    if job is None:  # finished and flushed since the transition
        return await get_job(rt, user_id, job_id)
    # Also on a repeated execute of a queued job: the first call may have queued it and then
    # failed to reach RQ (a 503 to the client); its retry enqueues now, not after the
    # sweeper's TOLLGATE_REQUEUE_AFTER. Harmless otherwise: RQ ids are deterministic and a
    # live batch is left alone.
    await dispatch(rt, job_id, job)
    if model_gone(rt, job):  # dispatch failed it, refunded: answer that, not `queued`
        return await get_job(rt, user_id, job_id)
    return await with_queue_position(rt, job_view(rt, job, with_items=True))


async def cancel(rt: Runtime, user_id: str, job_id: str) -> dict[str, Any]:
    view = await get_job(rt, user_id, job_id, with_items=False)
    status = view["status"]
    if status in TERMINAL and status != JobState.CANCELED:
        raise InvalidTransition(f"the job is already {status}", job_status=status)
    if status != JobState.CANCELED:  # a repeated cancel answers like the first one
        await rt.core.cancel(job_id, user_id, reason="user",
                             flush_delay_ms=rt.settings.flush_delay * 1000)
    return await get_job(rt, user_id, job_id)
