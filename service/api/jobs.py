"""Job logic behind the routes: create, read (live or history, one shape), dispatch to RQ."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec

from service.api.schemas import JobCreate
from service.api.users import as_known_user
from service.contract import input_key, output_key
from service.dispatch import dispatch
from service.errors import BadArgument, InvalidTransition, NotFound, TollgateError
from service.history.models import JobLog
from service.history.queries import history_job, history_page
from service.runtime import Runtime
from service.state.codes import Code
from service.state.store import TERMINAL_STATES, now_ms

PRESIGN_IN_THREAD_ABOVE = 32


class UploadsMissing(TollgateError):
    status, code, title = 409, "uploads_missing", "Some uploads are missing"


def iso(ms: str | int | None) -> str | None:
    if ms in (None, ""):
        return None
    return datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat().replace("+00:00", "Z")


def iso_dt(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


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
                        "headers": up.headers, "expires_at": iso_dt(up.expires_at)})
        return out

    if len(meta) > PRESIGN_IN_THREAD_ABOVE:
        return await anyio.to_thread.run_sync(sign)
    return sign()


async def create_job(
    rt: Runtime, user_id: str, body: JobCreate, idempotency_key: str | None
) -> dict[str, Any]:
    settings = rt.settings
    if len(body.items) > settings.max_items:
        raise BadArgument(f"at most {settings.max_items} items per job")
    for item in body.items:
        if item.size > settings.max_item_size:
            raise BadArgument(f"item {item.name!r} is larger than {settings.max_item_size} bytes"
                                )
    meta = [{"name": i.name, "content_type": i.content_type, "size": i.size} for i in body.items]
    job_id = rt.core.keys.new_job_id(user_id)
    created_ms = now_ms()
    reserve = functools.partial(
        rt.core.reserve, job_id=job_id, user_id=user_id, total=len(meta), at_ms=created_ms,
        price=settings.price_per_item, hold_ttl_ms=settings.hold_ttl * 1000,
        meta_json=json.dumps(meta), rule_id=body.rule_id or "", idempotency_key=idempotency_key,
        body_hash=body_hash(body), idempotency_ttl_ms=settings.idempotency_ttl * 1000,
    )
    code, job_id = await as_known_user(rt, user_id, reserve)
    if code is Code.OK:  # the script wrote exactly this: no need to read it back
        cost = len(meta) * settings.price_per_item
        view = live_view(rt, {
            "id": job_id, "state": "created", "total": str(len(meta)), "done": "0",
            "failed": "0", "cost": str(cost), "charged": "0", "refunded": "0",
            "rule_id": body.rule_id or "", "created_at": str(created_ms),
            "updated_at": str(created_ms)}, None, None)
    else:
        view = await get_job(rt, user_id, job_id, with_items=False)
    if view["status"] == "created":
        view["uploads"] = await _presign_uploads(rt, job_id, meta)
    else:
        view["uploads"] = []
    view["idempotent_replay"] = code is Code.ALREADY
    return view


def _item_views(rt: Runtime, job_id: str, total: int, meta: list[dict[str, Any]],
                states: dict[str, str]) -> list[dict[str, Any]]:
    views = []
    for index in range(total):
        described = meta[index] if index < len(meta) else {}
        view: dict[str, Any] = {"index": index, "name": described.get("name"),
                                "status": "pending"}
        state = states.get(str(index))
        if state is not None:
            status, _, detail = state.partition(":")
            view["status"] = status
            if status == "ok":
                view["result_url"] = rt.storage.presign_download(
                    detail or output_key(job_id, index), rt.settings.result_url_ttl)
            else:
                view["error"] = detail
        views.append(view)
    return views


def _progress(done: int, failed: int, total: int) -> float:
    return round((done + failed) / total, 4) if total else 0.0


def live_view(rt: Runtime, job: dict[str, str], items: dict[str, str] | None,
              meta: str | None) -> dict[str, Any]:
    total, done, failed = int(job["total"]), int(job["done"]), int(job["failed"])
    view: dict[str, Any] = {
        "id": job["id"], "status": job["state"], "total_items": total, "done_items": done,
        "failed_items": failed, "progress": _progress(done, failed, total),
        "cost": int(job["cost"]), "charged": int(job["charged"]),
        "refunded": int(job["refunded"]), "rule_id": job.get("rule_id") or None,
        "created_at": iso(job.get("created_at")), "updated_at": iso(job.get("updated_at")),
        "started_at": iso(job.get("started_at")), "finished_at": iso(job.get("finished_at")),
        "reason": job.get("reason") or None,
    }
    if items is not None:
        view["items"] = _item_views(rt, job["id"], total, json.loads(meta or "[]"), items)
    return view


def history_view(rt: Runtime, row: JobLog, with_items: bool) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": row.id, "status": row.state, "total_items": row.total_items,
        "done_items": row.done_items, "failed_items": row.failed_items,
        "progress": _progress(row.done_items, row.failed_items, row.total_items),
        "cost": row.cost, "charged": row.charged, "refunded": row.refunded,
        "rule_id": row.rule_id, "created_at": iso_dt(row.created_at),
        "updated_at": iso_dt(row.updated_at), "started_at": iso_dt(row.started_at),
        "finished_at": iso_dt(row.finished_at), "reason": row.reason,
    }
    if with_items:
        items = []
        for item in row.items or []:
            shown: dict[str, Any] = {"index": item["index"], "name": item.get("name"),
                                     "status": item.get("status", "pending")}
            if shown["status"] == "ok":
                shown["result_url"] = rt.storage.presign_download(
                    item.get("output_key") or output_key(row.id, item["index"]),
                    rt.settings.result_url_ttl)
            elif item.get("error"):
                shown["error"] = item["error"]
            items.append(shown)
        view["items"] = items
    return view


async def get_job(rt: Runtime, user_id: str, job_id: str, *, with_items: bool = True
                  ) -> dict[str, Any]:
    if rt.core.keys.job(job_id) is None:
        raise NotFound(f"no job {job_id!r}")
    job, items, meta = await rt.core.job_snapshot(job_id)
    if job:
        if job.get("owner") != user_id:
            raise NotFound(f"no job {job_id!r}")
        return live_view(rt, job, items if with_items else None, meta)
    async with rt.sessions() as session:
        row = await history_job(session, user_id, job_id)
    if row is None:
        raise NotFound(f"no job {job_id!r}")
    return history_view(rt, row, with_items)


def encode_cursor(created_ms: int, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_ms}:{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ms, job_id = raw.split(":", 1)
        return int(ms), job_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadArgument("cursor is not one this API handed out") from exc


async def list_jobs(rt: Runtime, user_id: str, *, status: str | None, limit: int,
                    cursor: str | None) -> dict[str, Any]:
    before = decode_cursor(cursor) if cursor else None
    user = rt.core.keys.user(user_id)
    # Live jobs of one user are few (the concurrency limit plus jobs awaiting their flush).
    live_ids: list[str] = await rt.core.client.zrevrange(user.jobs, 0, -1)
    live: list[tuple[int, str, dict[str, Any]]] = []
    if live_ids:
        async with rt.core.client.pipeline(transaction=False) as pipe:
            for job_id in live_ids:
                pipe.hgetall(rt.core.job_keys(job_id).base)
            records = await pipe.execute()
        for record in records:
            if not record or (status and record["state"] != status):
                continue
            key = (int(record["created_at"]), record["id"])
            if before is None or key < before:
                live.append((*key, live_view(rt, record, None, None)))
    after = None if before is None else (datetime.fromtimestamp(before[0] / 1000, UTC), before[1])
    async with rt.sessions() as session:
        rows = await history_page(session, user_id, limit=limit + 1, before=after, state=status)
    seen = {job_id for _, job_id, _ in live}
    merged = list(live)
    for row in rows:
        if row.id not in seen:
            created_ms = int(row.created_at.timestamp() * 1000)
            merged.append((created_ms, row.id, history_view(rt, row, False)))
    merged.sort(key=lambda entry: (entry[0], entry[1]), reverse=True)
    page = merged[:limit]
    next_cursor = encode_cursor(page[-1][0], page[-1][1]) if len(merged) > limit else None
    return {"items": [view for _, _, view in page], "next_cursor": next_cursor}


async def _live_job(rt: Runtime, user_id: str, job_id: str) -> dict[str, str]:
    """The caller's live job record; a finished job in history is a 409, anything else 404."""
    job = await rt.core.job_record(job_id)
    if job and job.get("owner") == user_id:
        return job
    view = await get_job(rt, user_id, job_id, with_items=False)
    raise InvalidTransition(f"the job is already {view['status']}", job_status=view["status"])


async def confirm_upload(rt: Runtime, user_id: str, job_id: str) -> dict[str, Any]:
    job = await _live_job(rt, user_id, job_id)
    if job["state"] == "created":
        keys = [input_key(job_id, i) for i in range(int(job["total"]))]
        missing = await rt.storage.missing(keys)
        if missing:
            raise UploadsMissing(f"{len(missing)} of {len(keys)} uploads are missing",
                                 missing=missing)
    await rt.core.transition(job_id, "created", "uploaded", owner=user_id)
    return await get_job(rt, user_id, job_id)


async def execute(rt: Runtime, user_id: str, job_id: str) -> dict[str, Any]:
    await _live_job(rt, user_id, job_id)
    progress = await rt.core.transition(job_id, "uploaded", "queued", owner=user_id)
    if progress.state == "queued":
        # Also on a repeated execute: a crash right after the transition left nothing in RQ
        # (the sweeper would re-enqueue it later; a client's retry does it now, harmlessly).
        await dispatch(rt, job_id)
    return await get_job(rt, user_id, job_id)


async def cancel(rt: Runtime, user_id: str, job_id: str) -> dict[str, Any]:
    view = await get_job(rt, user_id, job_id, with_items=False)
    status = view["status"]
    if status in TERMINAL_STATES and status != "canceled":
        raise InvalidTransition(f"the job is already {status}", job_status=status)
    if status != "canceled":  # a repeated cancel answers like the first one
        await rt.core.cancel(job_id, user_id, reason="user",
                             flush_delay_ms=rt.settings.flush_delay * 1000)
    return await get_job(rt, user_id, job_id)
