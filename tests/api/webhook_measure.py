"""Webhooks: from a job's finish to the first attempt of its `job.completed` delivery, while
some receivers hang (issue 17, finding 5).

Jobs with one item each finish evenly over `--spread` seconds, spread over users (so over
buckets) and over `--receivers` receivers; the first `--hanging` of them hold the first
request of every delivery `--hang` seconds, past the sender's timeout. The sender runs as
the flusher runs it (`WebhookSender.run`), on the embedded fakeredis or a Redis; the
latency is taken from the moment the finishing script returned to the moment the request
reached its receiver: p50, p95 and the maximum, over every job and over the jobs of
receivers that answer. Used by tests/api/test_webhook_concurrency.py (on fakeredis, Redis and
a Cluster); bench/webhook_latency.py measures the same through `tollgate api` and `tollgate
flusher`.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from service.flusher.webhooks import WebhookSender
from service.jobs.deliveries import JobView, sender_client
from service.settings import Settings
from service.state.outbox import Outbox
from service.state.plans import Plan
from service.state.store import Core

LEASE_MS = 600_000
MakeSender = Callable[[Outbox, Settings, JobView, httpx.AsyncClient], Any]


@dataclass(frozen=True)
class Scenario:
    receivers: int = 23
    hanging: int = 1
    hang_s: float = 7.0
    timeout_s: float = 5.0
    jobs: int = 460
    spread_s: float = 40.0
    users: int = 40
    interval_s: float = 1.0  # the sender's pause between idle passes (flusher_interval)


QUICK = Scenario(jobs=92, spread_s=8.0, hang_s=3.0, timeout_s=2.0, users=20,
                 interval_s=0.25)


@dataclass
class Receiver:
    """An HTTP receiver on a free port, in a thread: the first arrival of each webhook-id
    (monotonic clock); a hanging one holds the first request of each id `hang_s`."""
    hang_s: float | None = None
    first: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        receiver, lock = self, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                msg_id, at = self.headers["webhook-id"], time.monotonic()
                with lock:
                    new = msg_id not in receiver.first
                    receiver.first.setdefault(msg_id, at)
                if new and receiver.hang_s is not None:
                    time.sleep(receiver.hang_s)
                    return  # the connection closes without an answer
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receivers_for(scenario: Scenario) -> Iterator[list[Receiver]]:
    made = [Receiver(scenario.hang_s if i < scenario.hanging else None)
            for i in range(scenario.receivers)]
    try:
        yield made
    finally:
        for receiver in made:
            receiver.close()


@dataclass
class Latencies:
    """Seconds from finish to first attempt, per job; `answering` leaves out the jobs of
    hanging receivers."""
    every: list[float]
    answering: list[float]

    @staticmethod
    def summary(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        return {"n": len(ordered), "p50": round(statistics.median(ordered), 3),
                "p95": round(p95, 3), "max": round(ordered[-1], 3)}


async def measure(core: Core, scenario: Scenario, make_sender: MakeSender = WebhookSender
                  ) -> Latencies:
    """Runs the scenario on `core` with the sender `make_sender` builds (another version of
    WebhookSender, to compare)."""
    settings = Settings(webhook_allow_private=True, webhook_timeout=scenario.timeout_s,
                        key_prefix=core.keys.prefix, buckets=core.keys.buckets)

    async def view(owner: str, job_id: str) -> dict[str, Any] | None:
        job = await core.job(job_id)
        return None if job is None else {"id": job_id, "status": str(job.state)}

    with receivers_for(scenario) as receivers:
        users = [f"wh-{uuid.uuid4().hex[:8]}-{n}" for n in range(scenario.users)]
        plan = Plan("bench", rule_slots=1, concurrency=scenario.jobs)  # every job at once
        for user in users:
            await core.ensure_user(user, plan, 10 * scenario.jobs)
        jobs: list[tuple[str, str, int]] = []
        for n in range(scenario.jobs):
            user, target = users[n % len(users)], n % len(receivers)
            job_id = core.keys.new_job_id(user)
            await core.reserve(job_id=job_id, user_id=user, total=1, price=1,
                               hold_ttl_ms=LEASE_MS, meta_json="[]",
                               webhook_url=receivers[target].url, webhook_events=("completed",))
            for step in (("created", "uploaded"), ("uploaded", "queued"),
                         ("queued", "running")):
                await core.transition(job_id, *step, lease_ms=LEASE_MS)
            jobs.append((job_id, user, target))

        client = sender_client(settings)
        sender = make_sender(Outbox(core), settings, view, client)
        stop = asyncio.Event()
        delivering = asyncio.create_task(sender.run(stop, scenario.interval_s))
        finished: dict[str, float] = {}
        try:
            began = time.monotonic()
            for n, (job_id, user, _) in enumerate(jobs):
                await asyncio.sleep(max(0.0, began + n * scenario.spread_s / len(jobs)
                                        - time.monotonic()))
                await core.item_result(job_id, user, callback_key="done", index=0, ok=True,
                                       detail="out/0", lease_ms=LEASE_MS, flush_delay_ms=60_000)
                finished[job_id] = time.monotonic()
            deadline = time.monotonic() + scenario.hang_s + scenario.timeout_s * 4 + 30
            while not all(f"{job_id}.completed" in receivers[target].first
                          for job_id, _, target in jobs):
                assert time.monotonic() < deadline, "some deliveries were never attempted"
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await delivering
            await client.aclose()
        every, answering = [], []
        for job_id, _, target in jobs:
            latency = receivers[target].first[f"{job_id}.completed"] - finished[job_id]
            every.append(latency)
            if target >= scenario.hanging:
                answering.append(latency)
        return Latencies(every, answering)
