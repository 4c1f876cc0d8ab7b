"""The blocking client, `Tollgate(url, token)`: aio.py's calls, not awaited.

Generated from aio.py by `python -m tests.client.regenerate`: edit aio.py, not this file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from datetime import date
from typing import Any
from urllib.parse import urljoin

import httpx

from service.client.files import FileSpec, backoff, read_files
from service.client.io_sync import each, sleep
from service.client.problems import ProblemError, name_job, raise_for_problem
from service.client.sse import EventParser
from service.client.views import Grant, Job, JobEvent, JobPage, Upload, as_job, grants_of
from service.client.wire import (
    job_body,
    key_header,
    page_params,
    prefer_wait,
    usage_params,
)


class Tollgate:
    """A user's client of the tollgate API. Every refusal raises a ProblemError (with
    `.code` and `.status`); use it as a context manager or call close()."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {token}"})
        # Upload URLs are presigned: they must never get the API's Authorization header.
        self.storage = httpx.Client(timeout=timeout, transport=transport)

    def __enter__(self) -> Tollgate:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()
        self.storage.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        raise_for_problem(response)
        return response.json() if response.content else None

    def me(self) -> dict[str, Any]:
        body: dict[str, Any] = self._call("GET", "/me")
        return body

    def grants(self) -> list[Grant]:
        """The user's open credit grants (GET /me `credits.grants`), in the order a hold
        draws them: the earliest expiry first, promotional before paid on a tie."""
        return grants_of(self._call("GET", "/me"))

    def create_key(
        self, name: str, *, scopes: Sequence[str] | None = None,
        spend_cap: dict[str, Any] | None = None, expires_at: str | None = None,
    ) -> dict[str, Any]:
        """A new API key (POST /me/keys); its `secret` is in this answer only. `spend_cap`:
        `{"credits": N, "period": "day" | "month"}`. Pass the secret as the token of another
        client to act through the key."""
        body: dict[str, Any] = {"name": name}
        for field, value in (("scopes", None if scopes is None else list(scopes)),
                             ("spend_cap", spend_cap), ("expires_at", expires_at)):
            if value is not None:
                body[field] = value
        key: dict[str, Any] = self._call("POST", "/me/keys", json=body)
        return key

    def keys(self) -> list[dict[str, Any]]:
        """The caller's API keys, each with `spent_this_period` and `last_used_at`."""
        data = self._call("GET", "/me/keys")
        items: list[dict[str, Any]] = data["items"]
        return items

    def revoke_key(self, key_id: str) -> None:
        """Revokes the key: every API process refuses it within 1 s."""
        self._call("DELETE", f"/me/keys/{key_id}")

    def set_webhook(self, url: str, events: Sequence[str]) -> dict[str, Any]:
        """The account webhook (PUT /me/webhook): where `credits.low`, `credits.exhausted`
        and `credits.expiring` go, signed like job webhooks (verify_webhook)."""
        hook: dict[str, Any] = self._call(
            "PUT", "/me/webhook", json={"url": url, "events": list(events)})
        return hook

    def webhook(self) -> dict[str, Any] | None:
        """The account webhook `{url, events}`, or None when none is set."""
        try:
            hook: dict[str, Any] = self._call("GET", "/me/webhook")
        except ProblemError as error:
            if error.status == 404:
                return None
            raise
        return hook

    def delete_webhook(self) -> None:
        """Removes the account webhook (events recorded before it still go out)."""
        self._call("DELETE", "/me/webhook")

    def account_deliveries(self) -> list[dict[str, Any]]:
        """The account webhook's deliveries (the newest 50), newest first."""
        data = self._call("GET", "/me/webhook/deliveries")
        items: list[dict[str, Any]] = data["items"]
        return items

    def set_alerts(self, *, low_balance: int | None) -> dict[str, Any]:
        """The low-balance alert (PUT /me/alerts): `credits.low` once each time available
        falls below `low_balance`; None turns it off."""
        alerts: dict[str, Any] = self._call(
            "PUT", "/me/alerts", json={"low_balance": low_balance})
        return alerts

    def alerts(self) -> dict[str, Any]:
        """The alert settings, `{low_balance}`."""
        alerts: dict[str, Any] = self._call("GET", "/me/alerts")
        return alerts

    def usage(self, first_day: date | str, last_day: date | str, *,
                    group_by: str = "day") -> dict[str, Any]:
        """The caller's usage statement (GET /me/usage): `{items, totals}`, one item per UTC
        day (`period`), model or API key (`key_id`) as group_by says, from first_day to
        last_day, both included (at most 366 days). Only jobs already moved to SQL count,
        each in the UTC day it finished."""
        body: dict[str, Any] = self._call(
            "GET", "/me/usage", params=usage_params(first_day, last_day, group_by))
        return body

    def usage_csv(self, first_day: date | str, last_day: date | str, *,
                        group_by: str = "day") -> str:
        """The same statement as CSV text: a header line, then one line per item."""
        response = self.http.get(
            "/me/usage", params=usage_params(first_day, last_day, group_by),
            headers={"Accept": "text/csv"})
        raise_for_problem(response)
        return response.text

    def create(
        self, files: Sequence[FileSpec], *, rule_id: str | None = None,
        model: str | None = None, params: dict[str, Any] | None = None,
        webhook: dict[str, Any] | None = None, idempotency_key: str | None = None,
        priority: str | None = None, start_deadline_s: int | None = None,
    ) -> Job:
        """Creates a job of these files (their exact sizes are the upload limits) and uploads
        each to the URL the API hands out. The job is then `created`: confirm() next.
        A failed upload cancels the job before it is raised, with the job's id as
        `error.job_id`: the job's hold and concurrency slot are free again.
        `priority` ("high", "normal", "low") and `start_deadline_s`: docs/scheduling.md;
        unset, the rule's priority (else normal) and no deadline."""
        items, contents = read_files(files)
        job = as_job(self._call(
            "POST", "/jobs", headers=key_header(idempotency_key),
            json=job_body(items, rule_id, model, params, webhook, priority,
                          start_deadline_s)))
        try:
            self.upload(job.uploads, contents)
        except Exception as error:
            self._abandon(job.id, error)
            raise
        return job

    def _abandon(self, job_id: str, error: Exception) -> None:
        """Cancels a job of this client's own that `error` stopped before the caller got it
        (the free plan runs one job at a time), and names it on the error."""
        name_job(error, job_id)
        try:
            self.cancel(job_id)
        except (ProblemError, httpx.HTTPError) as refused:
            error.add_note(f"job {job_id} could not be canceled: {refused}")

    def upload(self, uploads: Sequence[Upload], contents: Sequence[bytes]) -> None:
        """Puts each file to the URL the API handed out for it (presigned: no token goes
        there); the async client puts them all at once."""
        def put(upload: Upload) -> None:
            response = self.storage.request(
                upload.method, urljoin(self.base_url + "/", upload.url), headers=upload.headers,
                content=contents[upload.index])
            raise_for_problem(response)

        each(uploads, put)

    def confirm(self, job_id: str) -> Job:
        return as_job(self._call("POST", f"/jobs/{job_id}/confirm-upload"))

    def execute(self, job_id: str, *, wait: int | None = None) -> Job:
        """Queues the job; with `wait` (1-60 s) the answer comes when it is final, or
        after that long."""
        return as_job(self._call(
            "POST", f"/jobs/{job_id}/execute", headers=prefer_wait(wait),
            **self._wait_timeout(wait)))

    def get(self, job_id: str, *, wait: int | None = None) -> Job:
        return as_job(self._call(
            "GET", f"/jobs/{job_id}", headers=prefer_wait(wait), **self._wait_timeout(wait)))

    def _wait_timeout(self, wait: int | None) -> dict[str, httpx.Timeout]:
        """A read timeout that covers the server's hold (the client's default otherwise)."""
        if not wait:
            return {}
        read = self.http.timeout.read
        return {"timeout": httpx.Timeout(self.http.timeout.connect, read=wait + (read or 30.0))}

    def retry(self, job_id: str, *, idempotency_key: str | None = None) -> Job:
        """A new job of the finished job's failed items, on their stored inputs, at its
        price and params (`retry_of` names it). It is `uploaded`: execute() or run it."""
        return as_job(self._call(
            "POST", f"/jobs/{job_id}/retry", headers=key_header(idempotency_key)))

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The job's webhook deliveries (GET /jobs/{id}/webhooks), oldest first."""
        data = self._call("GET", f"/jobs/{job_id}/webhooks")
        items: list[dict[str, Any]] = data["items"]
        return items

    def redeliver(self, job_id: str, delivery_id: str) -> dict[str, Any]:
        """Sends that delivery's event again, now (one attempt, a new webhook-id, signed
        with the current secret); returns the new delivery."""
        delivery: dict[str, Any] = self._call(
            "POST", f"/jobs/{job_id}/webhooks/{delivery_id}/redeliver")
        return delivery

    def cancel(self, job_id: str) -> Job:
        return as_job(self._call("POST", f"/jobs/{job_id}/cancel"))

    def run(
        self, files: Sequence[FileSpec], *, timeout: float = 600.0,
        wait: int | None = None, **create: Any,
    ) -> Job:
        """create(), confirm(), execute(), then wait() for the end. With `wait` (1-60 s)
        the server holds each answer until the job is final (`Prefer: wait`): no polling."""
        job = self.create(files, **create)
        try:
            self.confirm(job.id)
            executed = self.execute(job.id, wait=wait)
        except ProblemError as refused:  # the job was not queued: nobody else would end it
            self._abandon(job.id, refused)
            raise
        if executed.finished:
            return executed
        return self.wait(job.id, timeout=timeout, hold=wait)

    def wait(
        self, job_id: str, *, timeout: float = 600.0,
        initial_delay: float = 0.2, max_delay: float = 5.0, factor: float = 1.5,
        hold: int | None = None,
    ) -> Job:
        """Polls until the job is done, failed or canceled, backing off between polls;
        with `hold` (1-60 s), each poll waits on the server (`Prefer: wait`) instead."""
        deadline = time.monotonic() + timeout
        for delay in backoff(initial_delay, factor, max_delay):
            left = deadline - time.monotonic()
            job = self.get(job_id, wait=max(1, min(hold, int(left))) if hold else None)
            if job.finished:
                return job
            if hold:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} is still {job.status} after "
                                       f"{timeout:.0f} s")
                continue
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:.0f} s")
            sleep(delay)
        raise AssertionError("unreachable")

    def events(self, job_id: str) -> Iterator[JobEvent]:
        """The job's live progress (server-sent events): one JobEvent per change, the first
        at once; the stream ends after the event with a final status."""
        timeout = httpx.Timeout(self.http.timeout.connect, read=None)
        headers = {"Accept": "text/event-stream"}
        with self.http.stream(
            "GET", f"/jobs/{job_id}/events", timeout=timeout, headers=headers,
        ) as response:
            if response.is_error:
                response.read()
                raise_for_problem(response)
            parser = EventParser()
            for line in response.iter_lines():
                event = parser.feed(line)
                if event is not None and event.event == "job":
                    yield JobEvent(id=event.id, job=as_job(json.loads(event.data)))

    def page(
        self, *, status: str | None = None, limit: int = 50, cursor: str | None = None,
    ) -> JobPage:
        """One page of the caller's jobs, newest first; pass its next_cursor for the next."""
        data = self._call("GET", "/jobs", params=page_params(status, limit, cursor))
        return JobPage(items=[as_job(job) for job in data["items"]],
                       next_cursor=data.get("next_cursor"))

    def list(self, *, status: str | None = None, limit: int = 50) -> Iterator[Job]:
        """Every job of the caller, newest first, fetching page after page by cursor."""
        cursor: str | None = None
        while True:
            page = self.page(status=status, limit=limit, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
