"""Checking a webhook delivery on the receiving side, as Standard Webhooks specifies:
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
base64-decoded part of the secret after `whsec_`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

TOLERANCE_S = 300


class WebhookVerificationError(Exception):
    """The delivery is not signed with this secret, or it is too old (a replay)."""


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes | str, *,
                   tolerance_s: int = TOLERANCE_S, now: float | None = None) -> dict[str, Any]:
    """The delivery's JSON payload when its signature and timestamp hold, else raises."""
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        signatures = lowered["webhook-signature"].split()
    except (KeyError, ValueError) as exc:
        raise WebhookVerificationError("missing or malformed webhook-* headers") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError("the webhook-timestamp is too old or too far ahead")
    raw = body.encode() if isinstance(body, str) else body
    try:
        expected = sign_webhook(secret, msg_id, timestamp, raw)
    except ValueError as exc:
        raise WebhookVerificationError("the secret is not whsec_<base64>") from exc
    if not any(hmac.compare_digest(expected, given) for given in signatures):
        raise WebhookVerificationError("no signature matches this secret")
    payload: dict[str, Any] = json.loads(raw)
    return payload
