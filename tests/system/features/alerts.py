"""Balance alerts and the account webhook in the system suite (issue 20, build item 4).

A few users of this feature's own set a low-balance alert and an account webhook
(`credits.low`, `credits.exhausted`) to a receiver of this module, and run jobs one at a
time (a lock per user), with a keyed grant now and then when they run low, so their balance
crosses the threshold down and back up several times.

At the books, for each of them:
- every delivery the receiver got verifies with one of the user's secrets seen during the
  run (Standard Webhooks: the client's verify_webhook, its timestamp against the moment it
  arrived; a state loss makes a new secret, which lives in Redis only), and says that user,
  its threshold and a balance below it;
- every delivery GET /me/webhook/deliveries lists was received, with the same webhook-id;
- the crossings: the SQL credit ledger, in order of its rows' times (one step per Lua call:
  a job's release and charge share their time), gives the balance after each step; a
  `credits.low` is owed at each fall from >= low_balance to below it, a `credits.exhausted`
  at each fall below the cheapest price (1). With no state loss in the run, the distinct
  webhook-ids received of each type equal those counts exactly. The user's operations are
  sequential, so the rows' times order them as Redis ran them.
- After a state loss the count may be off by one per loss, either way, and no more: what
  Redis held and had not flushed is gone from SQL (a hold's dip, or an event recorded and
  not yet delivered), and the restored user's alert state is recomputed from the balance SQL
  gives it, so later events follow SQL again.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from service.client import WebhookVerificationError, verify_webhook
from tests.system.books import Report, _sql, _until
from tests.system.stacks import System
from tests.system.workload import Workload

USERS = 3
START_CREDITS = 40
LOW_BALANCE = 25
FLOOR = 1  # the cheapest model's price (tests/system/harness.py: thumbnail)
SETTLE_S = 30.0
EVENTS = ("credits.low", "credits.exhausted")


@dataclass(frozen=True, slots=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    at: float  # Unix time it arrived: its signature's timestamp is checked against it


@dataclass
class AccountReceiver:
    """Answers 200 to every delivery and keeps each, by the user its data names."""
    got: dict[str, list[Delivery]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    user = str(json.loads(raw)["data"]["user_id"])
                except (ValueError, KeyError, TypeError):
                    user = "?"
                with receiver.lock:
                    receiver.got.setdefault(user, []).append(Delivery(
                        {k.lower(): v for k, v in self.headers.items()}, raw, time.time()))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="receiver-account",
                         daemon=True).start()
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/account"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def of(self, user: str) -> list[Delivery]:
        with self.lock:
            return list(self.got.get(user, []))


def verified(secrets: set[str], delivery: Delivery) -> dict[str, Any] | None:
    """The delivery's payload if it verifies with one of the secrets, else None."""
    for secret in secrets:
        try:
            return verify_webhook(secret, delivery.headers, delivery.body, now=delivery.at)
        except WebhookVerificationError:
            continue
    return None


def owed(amounts: list[tuple[Any, str | None, int]], threshold: int) -> int:
    """The falls below `threshold` (each after being at or above it) in the ledger's rows
    (time, job id, amount), in order; the rows of one job at one time are one step."""
    balance, fired, falls = 0, False, 0
    steps: list[int] = []
    previous: tuple[Any, str | None] | None = None
    for at, job_id, amount in amounts:
        if job_id is not None and previous == (at, job_id):
            steps[-1] += amount
        else:
            steps.append(amount)
        previous = (at, job_id)
    for step in steps:
        balance += step
        if balance < threshold and not fired:
            fired, falls = True, falls + 1
        elif balance >= threshold:
            fired = False
    return falls


@dataclass
class Alerts:
    share: float = 0.12
    users: list[str] = field(default_factory=list)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # Every signing secret seen per user: the secret lives in Redis only, so a state loss
    # makes a new one, and deliveries signed before it verify with the old one.
    secrets: dict[str, set[str]] = field(default_factory=dict)
    receiver: AccountReceiver = field(default_factory=AccountReceiver)

    async def start(self, work: Workload) -> None:
        """A new system: its own users, alert and webhook, and a fresh receiver."""
        self.receiver.stop()
        self.receiver = AccountReceiver()
        url = self.receiver.start()
        self.users, self.locks, self.secrets = [], {}, {}
        for _ in range(USERS):
            user = f"sys-alert-{uuid.uuid4().hex[:8]}"
            made = await work.call("POST /admin/users", "POST", work.api("/admin/users"),
                                   user="sys-admin", admin=True, expect={201},
                                   json={"id": user, "plan": "pro", "credits": START_CREDITS})
            hook = await work.call("PUT /me/webhook", "PUT", work.api("/me/webhook"),
                                   user=user, expect={200},
                                   json={"url": url, "events": list(EVENTS)})
            alert = await work.call("PUT /me/alerts", "PUT", work.api("/me/alerts"), user=user,
                                    expect={200}, json={"low_balance": LOW_BALANCE})
            if made is not None and hook is not None and alert is not None:
                self.users.append(user)
                self.locks[user] = asyncio.Lock()
                await self._note_secret(work, user)

    async def _note_secret(self, work: Workload, user: str) -> str | None:
        answer = await work.call("GET /me/webhook-secret", "GET",
                                 work.api("/me/webhook-secret"), user=user, expect={200})
        if answer is None:
            return None
        secret: str = answer.json()["secret"]
        self.secrets.setdefault(user, set()).add(secret)
        return secret

    async def act(self, work: Workload, user: str) -> None:
        """One step of a free alert user (the client's own user is left to the base mix): a
        job, or a grant when the balance is low."""
        free = [u for u in self.users if not self.locks[u].locked()]
        if not free:
            return
        mine = work.rng.choice(free)
        async with self.locks[mine]:
            me = await work.call("GET /me", "GET", work.api("/me"), user=mine, expect={200})
            if me is None:
                return
            available = int(me.json()["credits"]["available"])
            # Low: a grant now and then (back above the threshold, or not yet); often it
            # runs on down to a few credits, where jobs are 402s or take the last (exhausted).
            roll = work.rng.random()
            if (available < 3 and roll < 0.5) or (available < LOW_BALANCE - 8 and roll < 0.2):
                await work.grant(mine, work.rng.randint(5, 30))
            else:
                await work.run_job(mine, "run", refusals=frozenset({402}))
            await self._note_secret(work, mine)

    async def check(self, system: System, work: Workload, report: Report) -> None:
        url = system.stack.database_url
        losses = len(work.losses)
        figures = report.figures["alerts"] = {"users": len(self.users)}

        async def probe() -> list[str]:
            problems: list[str] = []
            sent = {kind: 0 for kind in EVENTS}
            owed_total = {kind: 0 for kind in EVENTS}
            for user in self.users:
                secret = await self._note_secret(work, user)
                listed = await work.call("GET /me/webhook/deliveries", "GET",
                                         work.api("/me/webhook/deliveries"), user=user,
                                         expect={200})
                if secret is None or listed is None:
                    problems.append(f"{user}: the secret or the delivery log did not answer")
                    continue
                keys = self.secrets[user]
                ids: dict[str, set[str]] = {kind: set() for kind in EVENTS}
                for delivery in self.receiver.of(user):
                    event = verified(keys, delivery)
                    if event is None:
                        problems.append(f"{user}: a delivery verifies with none of the "
                                        f"{len(keys)} secrets seen")
                        continue
                    data = event["data"]
                    if event["type"] not in ids or data["user_id"] != user or \
                            data["low_balance"] != LOW_BALANCE:
                        problems.append(f"{user}: unexpected event {event}")
                        continue
                    limit = LOW_BALANCE if event["type"] == "credits.low" else FLOOR
                    if data["available"] >= limit:
                        problems.append(f"{user}: {event['type']} at available "
                                        f"{data['available']}")
                    ids[event["type"]].add(delivery.headers["webhook-id"])
                received = set().union(*ids.values())
                for entry in listed.json()["items"]:
                    if entry["id"] not in received or not entry["delivered_at"]:
                        problems.append(f"{user}: delivery {entry['id']} ({entry['type']}) "
                                        f"logged, attempts {entry['attempts']}, not received")
                rows = await asyncio.to_thread(
                    _sql, url, "SELECT at, job_id, amount FROM credit_ledger "
                    "WHERE user_id = :user ORDER BY at, id", user=user)
                steps = [(row.at, row.job_id, int(row.amount)) for row in rows]
                for kind, threshold in (("credits.low", LOW_BALANCE),
                                        ("credits.exhausted", FLOOR)):
                    due, got = owed(steps, threshold), len(ids[kind])
                    sent[kind] += got
                    owed_total[kind] += due
                    if abs(got - due) > losses:
                        problems.append(f"{user}: {got} {kind} received, the ledger shows "
                                        f"{due} falls ({losses} state losses)")
            figures.update({f"{kind} sent": sent[kind] for kind in EVENTS})
            figures.update({f"{kind} owed by the ledger": owed_total[kind]
                            for kind in EVENTS})
            return problems

        report.check("balance alerts: one event per fall, signed, logged",
                     await _until(SETTLE_S, probe))


FEATURE = Alerts()
