"""What an abandoned job leaves in Redis: a free user looping create and cancel.

    python -m bench.abandoned_jobs [--jobs 300] [--quick]

One stack (a private redis-server, so its memory holds only this run), one `tollgate api`
(rate limits off, so the loop is not paced: the hour is extrapolated at the rate limit),
one `tollgate flusher` (the default 5 s flush delay) delivering webhooks to a local
receiver. For each case a fresh free user makes `--jobs` jobs of one item and cancels each;
once every job is flushed and every delivery ended, the Redis memory the case added is read
two ways:
`INFO memory` used_memory (after/before) and the sum of `MEMORY USAGE` over every key (SCAN),
with the bytes per abandoned job and the largest key families.

Cases: no webhook; a webhook the receiver takes (200); a webhook the receiver refuses (500:
the delivery stays due, retried for ~40 h). Per hour: bytes per job times the jobs a free user
can abandon in an hour at its write rate limit (two writes a job: create and cancel).
Target (issue 23): at most 50 MB an hour.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import httpx

from bench.harness import PNG, Result, Row, free_port, parser, run, stack
from service.api.ratelimit import DEFAULT_LIMITS, WINDOW_S

TARGET_MB_PER_HOUR = 50.0
JOBS_PER_HOUR = DEFAULT_LIMITS["free"]["write"] * (3600 // WINDOW_S) // 2


class Receiver:
    """Answers every POST with `status` (set per case)."""

    def __init__(self) -> None:
        self.status = 200
        self.count = 0
        receiver = self
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/hook"

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.count += 1
                self.send_response(receiver.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        Thread(target=self.server.serve_forever, daemon=True).start()


def family(key: str) -> str:
    """A key's name with its ids blanked: tg:{7}:job:01j…-7:webhooks -> tg:{b}:job:*:webhooks."""
    key = re.sub(r"\{\d+\}", "{b}", key)
    return re.sub(r"(?<=:)[^:{}]*\d[^:{}]*(?=:|$)", "*", key)


def memory(url: str) -> tuple[int, int, Counter[str]]:
    """(used_memory, Σ MEMORY USAGE over every key, that sum by key family)."""
    import redis

    with redis.Redis.from_url(url, decode_responses=True) as client:
        by_family: Counter[str] = Counter()
        for key in client.scan_iter(count=1000):
            by_family[family(key)] += int(client.memory_usage(key, samples=0) or 0)
        used = int(client.info("memory")["used_memory"])
    return used, sum(by_family.values()), by_family


async def abandon(http: httpx.AsyncClient, token: str, jobs: int,
                  webhook: str | None) -> list[str]:
    auth = {"Authorization": f"Bearer {token}"}
    body: dict[str, Any] = {"items": [{"name": "a.png", "content_type": "image/png",
                                       "size": len(PNG)}]}
    if webhook:
        body["webhook"] = {"url": webhook, "events": ["completed"]}
    ids = []
    for _ in range(jobs):
        made = await http.post("/jobs", json=body, headers=auth)
        assert made.status_code == 201, made.text
        job_id = made.json()["id"]
        canceled = await http.post(f"/jobs/{job_id}/cancel", headers=auth)
        assert canceled.status_code == 200, canceled.text
        ids.append(job_id)
    return ids


async def settled(url: str, receiver: Receiver, expect: int, within_s: float = 120) -> None:
    """Until no job hash is left and the receiver got `expect` requests (or within_s)."""
    import redis

    deadline = time.monotonic() + within_s
    with redis.Redis.from_url(url, decode_responses=True) as client:
        while time.monotonic() < deadline:
            jobs = [k for k in client.scan_iter(match="*:job:*", count=1000)
                    if not k.endswith(":webhooks")]
            if not jobs and receiver.count >= expect:
                return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"not settled: {len(jobs)} job keys, {receiver.count}/{expect} posts")


async def main(jobs: int, quick: bool) -> list[Result]:
    receiver = Receiver()
    cases = [("no webhook", None, 200), ("webhook, delivered", receiver.url, 200),
             ("webhook, receiver failing", receiver.url, 500)]
    rows: list[Row] = []
    with stack(TOLLGATE_WEBHOOK_ALLOW_PRIVATE="1") as bench:  # the default flush delay, 5 s
        api = bench.api()
        bench.flusher()
        admin, *tokens = await bench.tokens(["bench-admin"], admin=True) + \
            await bench.tokens([f"abandon{n}" for n in range(len(cases))])
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            for n in range(len(cases)):
                made = await http.post("/admin/users", json={
                    "id": f"abandon{n}", "plan": "free", "credits": 10**6},
                    headers={"Authorization": f"Bearer {admin}"})
                assert made.status_code == 201, made.text
            expected = 0
            for (label, webhook, status), token in zip(cases, tokens, strict=True):
                receiver.status = status
                await settled(bench.redis_url, receiver, expected)
                used_before, keys_before, families_before = memory(bench.redis_url)
                await abandon(http, token, jobs, webhook)
                expected += jobs if webhook else 0
                await settled(bench.redis_url, receiver, expected)
                await asyncio.sleep(2.0)  # the last outcomes recorded
                used_after, keys_after, families_after = memory(bench.redis_url)
                per_job = (keys_after - keys_before) / jobs
                grown = families_after.copy()
                grown.subtract(families_before)
                top = {name: round(size / jobs) for name, size in grown.most_common(3)
                       if size > 0}
                rows.append(Row(label, round(per_job, 1), None, None, {
                    "used_memory_per_job": round((used_after - used_before) / jobs, 1),
                    "mb_per_hour": round(per_job * JOBS_PER_HOUR / 1e6, 2),
                    "largest": ", ".join(f"{k} {v} B" for k, v in top.items())}))
                print(label, rows[-1], flush=True)
    for row in rows:
        row.ratio = round(TARGET_MB_PER_HOUR / max(row.extra["mb_per_hour"], 1e-6), 1)
        row.target = 1.0
    base = Row(f"target: {TARGET_MB_PER_HOUR:g} MB an hour at {JOBS_PER_HOUR} jobs an hour",
               round(TARGET_MB_PER_HOUR * 1e6 / JOBS_PER_HOUR, 1), 1.0, None, {})
    return [Result("abandoned_jobs", "Redis bytes an abandoned job leaves (create, cancel), "
                   "a free user at its write rate limit", "bytes/job", base, rows,
                   {"jobs": jobs, "jobs_per_hour": JOBS_PER_HOUR}, quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--jobs", type=int, default=300)
    args = cli.parse_args()
    run(main(20 if args.quick else args.jobs, args.quick), args)
