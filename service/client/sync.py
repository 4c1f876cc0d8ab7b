"""The blocking client: `Tollgate(url, token)`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urljoin

import httpx

from service.client.files import FileSpec, backoff, read_files
from service.client.problems import raise_for_problem
from service.client.sse import EventParser
from service.client.views import Job, JobEvent, JobPage, Upload, as_job


def job_body(items: list[dict[str, Any]], rule_id: str | None, model: str | None,
             params: dict[str, Any] | None, webhook: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"items": items}
    for name, value in (("rule_id", rule_id), ("model", model), ("params", params),
                        ("webhook", webhook)):
        if value is not None:
            body[name] = value
    return body


def key_header(idempotency_key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": idempotency_key} if idempotency_key else {}


class Tollgate:
    """A user's client of the tollgate API. Every refusal raises a ProblemError (with
    `.code` and `.status`); use it as a context manager or call close()."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport,
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

    def create(self, files: Sequence[FileSpec], *, rule_id: str | None = None,
               model: str | None = None, params: dict[str, Any] | None = None,
               webhook: dict[str, Any] | None = None, idempotency_key: str | None = None
               ) -> Job:
        """Creates a job of these files (their exact sizes are the upload limits) and uploads
        each to the URL the API hands out. The job is then `created`: confirm() next."""
        items, contents = read_files(files)
        job = as_job(self._call("POST", "/jobs", headers=key_header(idempotency_key),
                                json=job_body(items, rule_id, model, params, webhook)))
        self.upload(job.uploads, contents)
        return job

    def upload(self, uploads: Sequence[Upload], contents: Sequence[bytes]) -> None:
        for upload in uploads:
            response = self.storage.request(upload.method, urljoin(self.base_url + "/", upload.url),
                                            headers=upload.headers, content=contents[upload.index])
            raise_for_problem(response)

    def confirm(self, job_id: str) -> Job:
        return as_job(self._call("POST", f"/jobs/{job_id}/confirm-upload"))

    def execute(self, job_id: str) -> Job:
        return as_job(self._call("POST", f"/jobs/{job_id}/execute"))

    def get(self, job_id: str) -> Job:
        return as_job(self._call("GET", f"/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        return as_job(self._call("POST", f"/jobs/{job_id}/cancel"))

    def run(self, files: Sequence[FileSpec], *, timeout: float = 600.0, **create: Any) -> Job:
        """create(), confirm(), execute(), then wait() for the end."""
        job = self.create(files, **create)
        self.confirm(job.id)
        self.execute(job.id)
        return self.wait(job.id, timeout=timeout)

    def wait(self, job_id: str, *, timeout: float = 600.0, initial_delay: float = 0.2,
             max_delay: float = 5.0, factor: float = 1.5) -> Job:
        """Polls until the job is done, failed or canceled, backing off between polls."""
        deadline = time.monotonic() + timeout
        for delay in backoff(initial_delay, factor, max_delay):
            job = self.get(job_id)
            if job.finished:
                return job
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:.0f} s")
            time.sleep(delay)
        raise AssertionError("unreachable")

    def events(self, job_id: str) -> Iterator[JobEvent]:
        """The job's live progress (server-sent events): one JobEvent per change, the first
        at once; the stream ends after the event with a final status."""
        with self.http.stream("GET", f"/jobs/{job_id}/events",
                              headers={"Accept": "text/event-stream"},
                              timeout=httpx.Timeout(self.http.timeout.connect, read=None)
                              ) as response:
            if response.is_error:
                response.read()
                raise_for_problem(response)
            parser = EventParser()
            for line in response.iter_lines():
                event = parser.feed(line)
                if event is not None and event.event == "job":
                    yield JobEvent(id=event.id, job=as_job(json.loads(event.data)))

    def page(self, *, status: str | None = None, limit: int = 50, cursor: str | None = None
             ) -> JobPage:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        data = self._call("GET", "/jobs", params=params)
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
