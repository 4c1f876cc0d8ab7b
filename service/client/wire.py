"""What the calls send besides their path: the body of POST /jobs and the headers, the same
for both clients."""

from __future__ import annotations

from datetime import date
from typing import Any


def job_body(items: list[dict[str, Any]], rule_id: str | None, model: str | None,
             params: dict[str, Any] | None, webhook: dict[str, Any] | None,
             priority: str | None = None, start_deadline_s: int | None = None
             ) -> dict[str, Any]:
    """POST /jobs's body; a field left None is not sent (the rule's, else the default)."""
    body: dict[str, Any] = {"items": items}
    for name, value in (("rule_id", rule_id), ("model", model), ("params", params),
                        ("webhook", webhook), ("priority", priority),
                        ("start_deadline_s", start_deadline_s)):
        if value is not None:
            body[name] = value
    return body


def key_header(idempotency_key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": idempotency_key} if idempotency_key else {}


def prefer_wait(wait: int | None) -> dict[str, str]:
    """`Prefer: wait=N` (1-60 s): the server holds its answer until the job is final."""
    return {"Prefer": f"wait={wait}"} if wait else {}


def page_params(status: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if cursor:
        params["cursor"] = cursor
    return params


def usage_params(first_day: date | str, last_day: date | str, group_by: str) -> dict[str, str]:
    """GET /me/usage's query: days as YYYY-MM-DD (a date, or text passed as it is)."""
    def day(value: date | str) -> str:
        return value.isoformat() if isinstance(value, date) else value

    return {"from": day(first_day), "to": day(last_day), "group_by": group_by}
