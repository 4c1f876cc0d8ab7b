"""The mixed workload, over HTTP only: a few client tasks, each a pro user of its own.

Each client loops over: a job run to its end (two models, some items that fail, sometimes
a retried create or a retried execute), a job canceled (before or after it ran), a job left
holding its credits until the hold expires, a keyed admin grant sent twice. Half the jobs
carry a webhook to one of the receivers. Issue 22: some finished jobs with failed items are
retried (POST /jobs/{id}/retry, keyed, sent twice; the retry job executed: a thumbnail
item that is no image fails again, a slow item marked `flaky` succeeds), some delivered
webhooks are redelivered, and some executes and GETs wait (`Prefer: wait=5`); what each
answered is kept for the books. A scraper reads the flush lag from /metrics.
Every answer is counted; one that the contract does not allow is kept as unexpected.
"""

from __future__ import annotations

import asyncio
import io
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image

from service.flusher.bucket import CLAIM_MS
from tests.system.features import load_features
from tests.system.harness import Stack
from tests.system.receivers import FAILING, GOOD, HANGING, Receivers

TERMINAL = frozenset({"done", "failed", "canceled"})
CALL_DEADLINE_S = 45.0  # a call retried past this (503, no connection) counts as unexpected
LOST = frozenset({403, 404, 409})
AFTER_FAULTS_S = 15.0  # traffic after the last fault, for the checks "after recovery"
GONE_AFTER_S = 5.0  # a job that answers no view this long is taken as gone
NEAR_LOSS_S = 10.0  # a job created this close before a noted loss may be the loss's
WAIT_S = 5  # `Prefer: wait=5` on some executes and GETs
PRICES = {"thumbnail": 1, "slow": 2}  # price_per_item of harness.MODELS_TOML
LAG = re.compile(r"^tollgate_flush_lag_seconds\s+(\S+)", re.M)


@dataclass
class JobRecord:
    id: str
    user: str
    model: str
    kind: str  # run | cancel | hold
    webhook: str | None
    events: tuple[str, ...]
    created_at: float  # monotonic, when its create answered
    phase: str
    live_at_wipe: bool = False  # live when the state store was lost
    final: dict[str, Any] | None = None
    retry_of: str | None = None  # kind "retry": the job whose failed items it runs
    retried_items: int = 0  # the original's failed_items when it was retried
    extra: dict[str, Any] = field(default_factory=dict)  # what a feature added to its create


@dataclass(frozen=True, slots=True)
class WaitAnswer:
    """An answer to a request with `Prefer: wait=WAIT_S`."""

    record: JobRecord
    what: str
    sent_wall: float  # Unix time the first try was sent
    elapsed: float  # seconds until the answer, retries included
    status: str
    applied: bool  # Preference-Applied came back (no free stream slot: it did not)


@dataclass(frozen=True, slots=True)
class Redelivery:
    """A POST .../redeliver of a delivered job.completed, and the webhook-ids the receiver
    had seen for the job before it."""

    record: JobRecord
    delivery_id: str
    seen_before: frozenset[str]
    at: float  # monotonic, when the 202 came back


@dataclass
class Answers:
    counts: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def note(self, what: str, response: httpx.Response | None, expected: set[int]) -> None:
        status = response.status_code if response is not None else 0
        self.counts[f"{what} {status}"] += 1
        if status not in expected:
            body = response.text[:200].strip() if response is not None else "no answer in time"
            self.unexpected.append(f"{what}: {status} (expected {sorted(expected)}) {body}")


def _images() -> list[bytes]:
    out = []
    for color in ("red", "green", "blue"):
        buffer = io.BytesIO()
        Image.new("RGB", (48, 32), color).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


class Workload:
    def __init__(self, stack: Stack, receivers: Receivers, *, seed: int = 1) -> None:
        self.stack, self.receivers = stack, receivers
        self.rng = random.Random(seed)
        self.jobs: dict[str, JobRecord] = {}
        # Jobs a feature made outside the workload's records, which it checks itself (the
        # dormant users' jobs: the workload must never call about them).
        self.feature_jobs: set[str] = set()
        self.users: list[str] = []
        self.answers = Answers()
        self.lag: list[tuple[float, float]] = []
        self.scrape_failures = 0
        self.grants = 0
        self.notes: list[str] = []
        self.losses: list[float] = []  # monotonic, when a state store was lost
        self.maybe_lost: list[tuple[JobRecord, str]] = []  # 403/404/409 judged at the books
        self.loss_times: list[float] = []  # the same, wall clock (the API's timestamps)
        self.disruptions: list[float] = []  # monotonic: a loss, or an API process killed
        self.flusher_kills: list[float] = []  # monotonic: a flusher killed with kill -9
        # Per loss, the monotonic span (and its wall-clock twin) in which a job may have left
        # nothing in SQL: a pass or two before the wipe began, reaching back to a flusher
        # killed within CLAIM_MS before it (what that flusher had claimed and not written
        # comes back only after the claim, so it was still in Redis only).
        self.trace_windows: list[tuple[float, float, Callable[[JobRecord], bool]]] = []
        self.trace_windows_wall: list[tuple[float, float]] = []
        self.phase = "main"
        self.stop = asyncio.Event()  # set when the phase's clients stop
        self.features = load_features()
        self.waits: list[WaitAnswer] = []
        self.redeliveries: list[Redelivery] = []
        self._images = _images()
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(15.0),
                                       limits=httpx.Limits(max_connections=64))

    async def close(self) -> None:
        await self._http.aclose()

    # --- HTTP ------------------------------------------------------------------------------

    async def call(self, what: str, method: str, url: str, *, user: str | None,
                   admin: bool = False, expect: set[int], refusals: frozenset[int] = frozenset(),
                   job: JobRecord | None = None, **kwargs: Any) -> httpx.Response | None:
        """One call, retried as a client should after no answer or a 503 (Retry-After).
        About a job that was live when the state was lost, 403/404/409 are that loss's (the
        job's own check, every job final, reports it) rather than unexpected answers."""
        deadline = time.monotonic() + CALL_DEADLINE_S
        response: httpx.Response | None = None
        given = dict(kwargs.pop("headers", None) or {})  # a feature's own credential stays
        while time.monotonic() < deadline:
            headers = dict(given)
            if user is not None and "Authorization" not in given:
                # Made again on every try: `tollgate dev` restarted with a new secret.
                token = await asyncio.to_thread(self.stack.token, user, admin=admin)
                headers["Authorization"] = f"Bearer {token}"
            kwargs["headers"] = headers
            try:
                response = await self._http.request(method, url, **kwargs)
            except httpx.TransportError:
                await asyncio.sleep(0.3)
                continue
            if response.status_code == 503 or (response.status_code == 401 and user):
                # 401: `tollgate dev` started again with a new secret; the token is re-made.
                await asyncio.sleep(min(float(response.headers.get("Retry-After") or 1), 2))
                continue
            break
        if job is not None and (job.live_at_wipe or self._near_a_loss(job)):
            refusals = refusals | LOST  # (perhaps since this call began)
        if job is not None and response is not None and self._hold_ran_out(job, response):
            refusals = refusals | {409}
        if job is not None and response is not None and response.status_code in LOST and \
                response.status_code not in expect | refusals:
            # Judged at the books: a store restarted empty answers 404 before the restart
            # returns and the loss is noted (state_lost marks the job then).
            self.answers.counts[f"{what} {response.status_code}"] += 1
            self.maybe_lost.append((job, f"{what}: {response.status_code} (expected "
                                         f"{sorted(expect | refusals)}) {response.text[:200]}"))
            return None
        self.answers.note(what, response, expect | refusals)
        return response if response is not None and response.status_code in expect else None

    def unexpected_answers(self) -> list[str]:
        """The answers the contract does not allow, with a 403/404/409 about a job taken as
        its store loss's when the job was live at a loss or created just before one."""
        return [*self.answers.unexpected, *(text for job, text in self.maybe_lost
                                            if not (job.live_at_wipe or self._near_a_loss(job)))]

    def _near_a_loss(self, job: JobRecord) -> bool:
        """Created while a store was being lost (a restart takes seconds) or just before: its
        create may have answered after the loss was noted. The books then hold it to the same
        account as a job live at the loss (final, or lost without trace)."""
        return any(loss - NEAR_LOSS_S <= job.created_at <= loss for loss in self.losses)

    def _hold_ran_out(self, job: JobRecord, response: httpx.Response) -> bool:
        """A 409 to a client too slow for the hold: its TTL ran out and the job was canceled
        (or flushed: no status) before this call."""
        if response.status_code != 409 or \
                time.monotonic() < job.created_at + self.stack.timing.hold_ttl - 0.5:
            return False
        try:
            return response.json().get("job_status") in (None, "canceled")
        except ValueError:
            return False

    def api(self, path: str) -> str:
        return f"{self.stack.api_url}{path}"

    # --- set-up ----------------------------------------------------------------------------

    async def add_users(self, count: int) -> None:
        for _ in range(count):
            user = f"sys-{uuid.uuid4().hex[:8]}"
            await self.call("POST /admin/users", "POST", self.api("/admin/users"),
                            user="sys-admin", admin=True, expect={201},
                            json={"id": user, "plan": "pro", "credits": 400})
            self.users.append(user)

    async def grant(self, user: str, amount: int) -> None:
        """A keyed admin grant sent twice: the second answers duplicate, adds nothing."""
        key = f"grant-{uuid.uuid4().hex}"
        body = {"amount": amount, "reason": "system suite top-up"}
        first, second = [await self.call(f"POST credits ({label})", "POST",
                                         self.api(f"/admin/users/{user}/credits"),
                                         user="sys-admin", admin=True, expect={200}, json=body,
                                         headers={"Idempotency-Key": key})
                         for label in ("first", "again")]
        self.grants += 1
        if first is None or second is None:
            return
        if not second.json()["duplicate"] or \
                second.json()["credits"]["granted"] != first.json()["credits"]["granted"]:
            self.answers.unexpected.append(f"grant {key} sent twice added twice: "
                                           f"{first.text} then {second.text}")

    # --- one client ------------------------------------------------------------------------

    def _items(self, model: str) -> list[tuple[dict[str, Any], bytes]]:
        out = []
        for index in range(self.rng.randint(1, 6)):
            bad = self.rng.random() < 0.2
            if model == "thumbnail":
                data = b"not an image" if bad else self.rng.choice(self._images)
                kind = "image/png"
            elif bad and self.rng.random() < 0.5:  # fails once: its retry succeeds
                data, kind = b"flaky-" + uuid.uuid4().hex.encode(), "text/plain"
            else:
                data, kind = (b"fail" if bad else b"ok") + bytes([index]) * 16, "text/plain"
            out.append(({"name": f"item-{index}", "content_type": kind, "size": len(data)},
                        data))
        return out

    async def create(self, user: str, kind: str, *, extra: dict[str, Any] | None = None,
                     auth: str | None = None, refusals: frozenset[int] = frozenset()
                     ) -> tuple[JobRecord, dict[str, Any], list[bytes]] | None:
        """A job of `kind`; a feature adds fields to the body (`extra`), sends it with
        another credential (`auth`, the whole Authorization value) and names the refusals
        its fields may bring."""
        model = self.rng.choice(("thumbnail", "slow"))
        items = self._items(model)
        body: dict[str, Any] = {"model": model, "items": [meta for meta, _ in items],
                                **(extra or {})}
        receiver: str | None = None
        events: tuple[str, ...] = ("completed",)
        if self.rng.random() < 0.5:
            receiver = self.rng.choice((*GOOD, *GOOD, FAILING, HANGING))
            events = self.rng.choice((("completed",), ("started", "completed")))
            body["webhook"] = {"url": self.receivers.url(receiver), "events": list(events)}
        key = f"create-{uuid.uuid4().hex}"
        headers = {"Idempotency-Key": key, **({"Authorization": auth} if auth else {})}
        created = await self.call("POST /jobs", "POST", self.api("/jobs"), user=user,
                                  expect={201}, refusals=frozenset({402, 429}) | refusals,
                                  json=body, headers=headers)
        if created is None:
            return None
        view = created.json()
        if self.rng.random() < 0.3:  # the client retries as if the answer had been lost
            again = await self.call("POST /jobs (retried)", "POST", self.api("/jobs"),
                                    user=user, expect={200, 201}, json=body, headers=headers)
            if again is not None and (again.json()["id"] != view["id"]
                                      or not again.json().get("idempotent_replay")):
                self.answers.unexpected.append(f"retried create {key}: {view['id']} then "
                                               f"{again.text[:200]}")
        record = JobRecord(view["id"], user, model, kind, receiver, events, time.monotonic(),
                           self.phase, extra=dict(extra or {}))
        self.jobs[record.id] = record
        return record, view, [data for _, data in items]

    async def upload(self, record: JobRecord, view: dict[str, Any], data: list[bytes],
                     count: int | None = None) -> bool:
        for upload, content in list(zip(view["uploads"], data, strict=True))[:count]:
            if await self.call("PUT upload", upload["method"], upload["url"], user=None,
                               expect={200}, headers=upload["headers"], content=content,
                               job=record) is None:
                return False
        return True

    async def run_job(self, user: str, kind: str, *, extra: dict[str, Any] | None = None,
                      auth: str | None = None, refusals: frozenset[int] = frozenset()) -> None:
        made = await self.create(user, kind, extra=extra, auth=auth, refusals=refusals)
        if made is None:
            return
        record, view, data = made
        path = f"/jobs/{record.id}"
        if kind == "hold":  # left alone: the hold expires
            await self.upload(record, view, data, count=self.rng.randint(0, len(data)))
            return
        ran = kind == "run" or self.rng.random() < 0.5
        if not await self.upload(record, view, data):
            return
        if ran:
            if await self.call("POST confirm", "POST", self.api(f"{path}/confirm-upload"),
                               user=user, expect={200}, job=record) is None:
                return
            for label in ("", " (retried)")[: 2 if self.rng.random() < 0.25 else 1]:
                if not await self.execute(record, label, waits=kind == "run"):
                    return
        if kind == "cancel":
            await asyncio.sleep(self.rng.uniform(0, 0.6))
            await self.call("POST cancel", "POST", self.api(f"{path}/cancel"), user=user,
                            expect={200}, refusals=frozenset({409} if ran else ()), job=record)
        await self.wait_final(record, 30.0)
        if kind == "run" and record.final is not None and not self.lossy(record):
            if record.final["failed_items"] and self.rng.random() < 0.5:
                await self.retry(record)
            if record.webhook in GOOD and self.rng.random() < 0.3:
                await self.redeliver(record)

    def lossy(self, record: JobRecord) -> bool:
        return record.live_at_wipe or self._near_a_loss(record)

    async def execute(self, record: JobRecord, label: str = "", *, waits: bool) -> bool:
        """POST execute, with `Prefer: wait=WAIT_S` a third of the time (`waits`): then 200
        with the view (final, or the wait ran out), else 202."""
        path = f"/jobs/{record.id}/execute"
        if not waits or self.rng.random() >= 1 / 3:
            return await self.call(f"POST execute{label}", "POST", self.api(path),
                                   user=record.user, expect={202}, job=record) is not None
        return await self.waited(record, f"POST execute{label} (wait)", "POST", path)

    async def waited(self, record: JobRecord, what: str, method: str, path: str) -> bool:
        """A request with `Prefer: wait=WAIT_S`; its answer is kept for the books."""
        sent, began = time.time(), time.monotonic()
        got = await self.call(what, method, self.api(path), user=record.user, expect={200},
                              job=record, headers={"Prefer": f"wait={WAIT_S}"})
        if got is None:
            return False
        view = got.json()
        self.waits.append(WaitAnswer(record, what, sent, time.monotonic() - began,
                                     view["status"],
                                     got.headers.get("Preference-Applied") == f"wait={WAIT_S}"))
        if view["status"] in TERMINAL:
            record.final = view
        return True

    async def retry(self, original: JobRecord) -> None:
        """POST /jobs/{id}/retry with an Idempotency-Key, sent twice (the second answers the
        same job), then the retry job (created `uploaded`) executed and read to its end."""
        assert original.final is not None
        key = f"retry-{uuid.uuid4().hex}"
        path = f"/jobs/{original.id}/retry"
        first = await self.call("POST retry", "POST", self.api(path), user=original.user,
                                expect={201}, refusals=frozenset({402, 429}), job=original,
                                headers={"Idempotency-Key": key})
        if first is None:
            return
        view = first.json()
        record = JobRecord(view["id"], original.user, original.model, "retry", None,
                           ("completed",), time.monotonic(), self.phase,
                           retry_of=original.id,
                           retried_items=original.final["failed_items"])
        self.jobs[record.id] = record
        if view.get("retry_of") != original.id or view["status"] != "uploaded" or \
                view["total_items"] != record.retried_items:
            self.answers.unexpected.append(f"retry of {original.id} ({record.retried_items} "
                                           f"failed): {first.text[:300]}")
        again = await self.call("POST retry (again)", "POST", self.api(path),
                                user=original.user, expect={200, 201}, job=record,
                                headers={"Idempotency-Key": key})
        if again is not None and (again.json()["id"] != record.id
                                  or not again.json().get("idempotent_replay")):
            self.answers.unexpected.append(f"retry {key} sent twice: {record.id} then "
                                           f"{again.text[:200]}")
        if await self.execute(record, " (retry job)", waits=True):
            await self.wait_final(record, 30.0)

    async def redeliver(self, record: JobRecord) -> None:
        """POST .../redeliver of the job's job.completed delivery, once its first attempt
        reached the (good) receiver: the books look for an attempt with a new webhook-id."""
        deadline = time.monotonic() + 5.0
        while not [a for a in self.receivers.of(record.id) if a.type == "job.completed"]:
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.2)
        log = await self.call("GET /jobs/{id}/webhooks", "GET",
                              self.api(f"/jobs/{record.id}/webhooks"), user=record.user,
                              expect={200}, job=record)
        items = [d for d in (log.json()["items"] if log is not None else [])
                 if d["type"] == "job.completed" and d["redelivery_of"] is None]
        if not items:
            return
        seen = frozenset(a.webhook_id for a in self.receivers.of(record.id))
        if await self.call("POST redeliver", "POST",
                           self.api(f"/jobs/{record.id}/webhooks/{items[0]['id']}/redeliver"),
                           user=record.user, expect={202}, job=record) is not None:
            self.redeliveries.append(Redelivery(record, items[0]["id"], seen, time.monotonic()))

    async def wait_final(self, record: JobRecord, within: float) -> None:
        deadline = time.monotonic() + within
        missing_since: float | None = None
        if self.rng.random() < 0.3 and record.final is None:
            await self.waited(record, "GET /jobs/{id} (wait)", "GET", f"/jobs/{record.id}")
        while time.monotonic() < deadline:
            got = await self.call("GET /jobs/{id}", "GET", self.api(f"/jobs/{record.id}"),
                                  user=record.user, expect={200}, job=record)
            if got is not None and got.json()["status"] in TERMINAL:
                record.final = got.json()
                return
            if got is None:  # 404 (a job lost with Redis): asked again for a while only
                missing_since = missing_since or time.monotonic()
                if time.monotonic() - missing_since > GONE_AFTER_S:
                    return
            else:
                missing_since = None
            await asyncio.sleep(0.3)

    async def client(self, user: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            featured = next((f for f in self.features if self.rng.random() < f.share), None)
            roll = self.rng.random()
            if featured is not None:
                await featured.act(self, user)
            elif roll < 0.1:
                await self.grant(user, self.rng.randint(20, 60))
            elif roll < 0.25:
                await self.run_job(user, "hold")
            elif roll < 0.42:
                await self.run_job(user, "cancel")
            else:
                await self.run_job(user, "run")
            me = await self.call("GET /me", "GET", self.api("/me"), user=user, expect={200})
            if me is not None and me.json()["credits"]["available"] < 100:
                await self.grant(user, 200)

    async def scrape(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                text = (await self._http.get(self.api("/metrics"), timeout=5)).text
                found = LAG.search(text)
                if found:
                    self.lag.append((time.monotonic(), float(found[1])))
                else:
                    self.scrape_failures += 1
            except httpx.HTTPError:
                self.scrape_failures += 1
            await asyncio.sleep(1.0)

    # --- phases ----------------------------------------------------------------------------

    async def run(self, seconds: float, clients: int, phase: str,
                  faults: list[tuple[str, Any]]) -> None:
        """`clients` client tasks for `seconds`; the faults one after another meanwhile
        (the phase then lasts until AFTER_FAULTS_S after the last)."""
        self.phase = phase
        if len(self.users) < clients:
            await self.add_users(clients - len(self.users))
        stop = self.stop = asyncio.Event()

        async def faults_then_stop() -> None:
            try:
                for _, action in faults:
                    await asyncio.sleep(2.0)
                    await action(self)
                await asyncio.sleep(max(AFTER_FAULTS_S if faults else 0.0,
                                        seconds - (time.monotonic() - began)))
            finally:
                stop.set()

        began = time.monotonic()
        results = await asyncio.gather(
            faults_then_stop(), self.scrape(stop),
            *(self.client(user, stop) for user in self.users[:clients]),
            return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def state_lost(self, where: str = "the state store",
                   held: Callable[[JobRecord], bool] = lambda _: True,
                   began: float | None = None) -> None:
        """Marks the live jobs whose state was `held` in the store just lost (`began`:
        monotonic, when the restart that lost it began)."""
        now, wall = time.monotonic(), time.time()
        began = now if began is None else began
        start = began - (2 * self.stack.timing.flusher_interval + 1.0)
        for killed in self.flusher_kills:
            if began - CLAIM_MS / 1000 <= killed <= began:
                start = min(start, killed - (2 * self.stack.timing.flusher_interval + 1.0))
        self.trace_windows.append((start, now, held))
        self.trace_windows_wall.append((wall - (now - start), wall))
        self.losses.append(now)
        self.disruptions.append(self.losses[-1])
        self.loss_times.append(wall)
        live = [record for record in self.jobs.values() if record.final is None and held(record)]
        for record in live:
            record.live_at_wipe = True
        self.notes.append(f"{len(live)} jobs live when {where} was lost: "
                          f"{[r.id for r in live][:6]}")

    async def wait_running(self, model: str, within: float = 20.0) -> bool:
        """Until one of the model's jobs is running with items still to do (a kill then
        lands mid-batch)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            live = [r for r in self.jobs.values() if r.model == model and r.final is None
                    and r.kind == "run"]
            for record in live[-4:]:
                got = await self.call("GET /jobs/{id}", "GET", self.api(f"/jobs/{record.id}"),
                                      user=record.user, expect={200}, job=record)
                if got is not None and got.json()["status"] == "running" \
                        and got.json()["progress"] < 1:
                    self.notes.append(f"{model} job {record.id} running at the kill")
                    return True
            await asyncio.sleep(0.1)
        self.notes.append(f"no {model} job seen running in {within} s: killed anyway")
        return False

    async def drain(self, within: float) -> None:
        """Reads every job until it is final or time runs out."""
        await asyncio.gather(*(self.wait_final(record, within)
                               for record in list(self.jobs.values())
                               if record.final is None or record.final["status"] not in TERMINAL))
