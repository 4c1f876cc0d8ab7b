"""POST /jobs: a job reserved at its model's price, with the rule's preset under its own
fields, and its upload URLs; a retried create with the same Idempotency-Key answers the
job it made."""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import anyio
import msgspec

from service.contract import input_key
from service.errors import BadArgument, IdempotencyKeyReused, PriorityNotAllowed, TollgateError
from service.jobs.alerts import min_price
from service.jobs.presets import Preset, job_preset
from service.jobs.provisioning import as_known_user
from service.jobs.schemas import ItemIn, JobCreate
from service.jobs.views import get_job, job_view
from service.jobs.webhooks import EVENTS, resolve_allowed
from service.models import Model
from service.runtime import Runtime
from service.state.apikeys import KeySpend
from service.state.codes import Code
from service.state.fsm import JobState
from service.state.plans import DEFAULT_PLAN, PLANS
from service.state.records import JobRecord, iso_z
from service.state.store import now_ms

PRESIGN_IN_THREAD_ABOVE = 32


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
    await check_priority(rt, user_id, preset.priority)
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


async def check_priority(rt: Runtime, user_id: str, priority: str) -> None:
    """403 priority_not_allowed for a priority the user's plan does not have (a user not
    provisioned yet is on the default plan)."""
    if priority in PLANS[DEFAULT_PLAN].priorities:
        return
    plan = (await rt.core.user_record(user_id)).get("plan") or DEFAULT_PLAN
    if priority not in PLANS.get(plan, PLANS[DEFAULT_PLAN]).priorities:
        raise PriorityNotAllowed(f"the {plan} plan does not allow priority {priority!r}")


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
    rt: Runtime, user_id: str, body: JobCreate, idempotency_key: str | None,
    key: KeySpend | None = None,
) -> dict[str, Any]:
    """`key`: the API key the job is made through (its spend cap checked with the hold)."""
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
        result_ttl_s=body.result_ttl_s, key=key, priority=preset.priority,
        start_deadline_ms=None if body.start_deadline_s is None
        else created_ms + body.start_deadline_s * 1000, min_price=min_price(rt),
    )
    code, job_id = await as_known_user(rt, user_id, reserve)
    if code is Code.OK:  # the script wrote exactly this: no need to read it back
        view = job_view(rt, JobRecord.reserved(
            job_id, user_id, total=len(meta), price=model.price_per_item,
            rule_id=body.rule_id, model=model.name, at_ms=created_ms, params=preset.params,
            result_ttl_s=body.result_ttl_s, key_id=key.key_id if key else None),
            with_items=False)
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


