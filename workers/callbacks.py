"""The worker's side of `POST /jobs/{id}/callback`: retried, idempotent, and stoppable.

Every callback carries an idempotency key, so retrying after a timeout or a 5xx can never
count an item twice. A 409 `invalid_transition` means the job was canceled or finished
under the worker, a 404 `not_found` that it was also flushed to history since
(`service.contract.is_closed_answer`): the batch stops quietly, there is nothing left to report.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import msgspec

from service.contract import CallbackIn, is_closed_answer

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_T = TypeVar("_T")


class CallbackError(Exception):
    """The API refused a callback for good, or never answered after every retry."""


class CallbackUnauthorized(CallbackError):
    """401: the callback token does not belong to this job (misconfigured or forged)."""


class JobClosed(Exception):
    """409 invalid_transition or 404 not_found: the job is canceled or finished (and maybe
    flushed); stop working on it."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(f"job closed: {detail or 'the job no longer takes reports'}")


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class RetryingClient:
    """Sends any request with exponential backoff on connection errors, 429 and 5xx."""

    def __init__(
        self,
        client: httpx.Client,
        *,
        attempts: int = 8,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.sleep = sleep

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """The first answer that is not worth retrying; raises CallbackError when none came."""
        response, _ = self._retrying(method, url, lambda: (
            self.client.request(method, url, **kwargs), None))
        return response

    def stream_get(self, url: str, consume: Callable[[httpx.Response], _T]
                   ) -> tuple[httpx.Response, _T | None]:
        """GET `url` and hand a 200's body, as it arrives, to `consume` (a fresh call per
        attempt: a connection lost mid-body is retried from the start); (the answer, what
        consume returned, or None for another status, whose body is never read)."""
        def attempt() -> tuple[httpx.Response, _T | None]:
            with self.client.stream("GET", url) as response:
                if response.status_code != 200:
                    return response, None
                return response, consume(response)

        return self._retrying("GET", url, attempt)

    def _retrying(self, method: str, url: str,
                  send: Callable[[], tuple[httpx.Response, _T]]) -> tuple[httpx.Response, _T]:
        last: str = ""
        for attempt in range(self.attempts):
            if attempt:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                self.sleep(delay * (0.5 + random.random() / 2))
            try:
                response, result = send()
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.warning("%s %s failed (%s), attempt %d", method, url, last, attempt + 1)
                continue
            if response.status_code >= 500 or response.status_code in RETRY_STATUSES:
                last = f"HTTP {response.status_code}"
                log.warning("%s %s answered %s, attempt %d", method, url, last, attempt + 1)
                continue
            return response, result
        raise CallbackError(f"{method} {url} gave up after {self.attempts} attempts: {last}")


class CallbackClient:
    """Posts one job's callbacks with its bearer token; safe to share between threads."""

    def __init__(self, url: str, token: str, poster: RetryingClient) -> None:
        self.url = url
        self.token = token
        self.poster = poster

    def post(self, report: CallbackIn) -> dict[str, Any]:
        response = self.poster.request(
            "POST", self.url, content=msgspec.json.encode(report),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        if response.status_code == 401:
            raise CallbackUnauthorized(f"callback refused with 401 for {self.url}")
        if response.is_client_error:
            problem = _problem(response)
            if is_closed_answer(response.status_code, problem.get("code")):
                raise JobClosed(str(problem.get("detail") or problem.get("title") or ""))
        if response.is_error:
            raise CallbackError(
                f"callback {report.event} refused with {response.status_code}: "
                f"{response.text[:300]}"
            )
        return _problem(response)
