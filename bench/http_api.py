"""HTTP: requests/s of POST /jobs (1 item), the worker's batched report of 8 items (POST
/jobs/{id}/callback) and GET /jobs/{id}, against a bare Litestar app (bench/bare_app.py)
under the same server and process count, in the same run.

    python -m bench.http_api [--quick] [--server granian|uvicorn] [--processes 1]
                             [--connections 32] [--users 20] [--seconds 2] [--rounds 2]

`tollgate api` and the bare app run side by side; one is under load at a time, from this
process (httpx, `--connections` at once, closed loop). Phases alternate, bare first; a row's
ratio is its rate over the mean of the bare phases around it, the median over rounds:
  POST /jobs (1 item)  201, each request from a pro user with a free slot (`--users` x 10
                       requests a phase; their jobs are canceled between phases)
  batched report       200: all 8 items of a fresh queued job, as a worker sends them (the
                       batches taken off the queue); one job per request
  GET /jobs/{id}       200: a finished 8-item job (8 result URLs signed), owner's token
The POST rows are compared with POST /bare/any sent the very same body (issue 11's targets:
0.5 for POST /jobs, 0.4 for the report); GET /jobs/{id} with GET /bare.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench.harness import (
    JOBS_PER_USER,
    Proc,
    Result,
    Row,
    Stack,
    closed_loop,
    job_body,
    median,
    parser,
    ready_job,
    report,
    report_body,
    run,
    stack,
    take_batches,
    users,
)

TARGETS = {"post1": 0.5, "batch": 0.4}
LABELS = {"post1": "POST /jobs (1 item)", "batch": "POST /jobs/{id}/callback (8-item report)",
          "get": "GET /jobs/{id} (8 items)"}


async def rate(url: str, connections: int, call: Callable[[httpx.AsyncClient, int],
               Awaitable[httpx.Response]], *, seconds: float | None = None,
               limit: int | None = None, status: int = 200) -> float:
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        async def one(index: int) -> None:
            answer = await call(http, index)
            assert answer.status_code == status, answer.text

        if limit is None:  # open and warm the connections (a limited run uses up fixtures)
            await asyncio.gather(*(one(i) for i in range(connections)))
        return (await closed_loop(one, tasks=connections, seconds=seconds, limit=limit)).rate


class Fixture:
    """What the next phase of each operation needs, made off the clock over HTTP."""

    def __init__(self, bench: Stack, api: Proc, tokens: list[str]) -> None:
        self.bench, self.api, self.tokens = bench, api, tokens
        self.created: list[tuple[str, str]] = []
        self.finished: list[tuple[str, str]] = []

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def cancel_created(self) -> None:
        async with httpx.AsyncClient(base_url=self.api.url, timeout=60) as http:
            for token, job_id in self.created:
                await http.post(f"/jobs/{job_id}/cancel", headers=self.auth(token))
        self.created = []

    async def batches(self) -> list[dict[str, Any]]:
        count = len(self.tokens) * JOBS_PER_USER
        async with httpx.AsyncClient(base_url=self.api.url, timeout=60) as http:
            owners = [self.tokens[i // JOBS_PER_USER] for i in range(count)]
            ids = [await ready_job(http, owner, 8) for owner in owners]
        self.finished = list(zip(owners, ids, strict=True))
        return await asyncio.to_thread(take_batches, self.bench, count)


async def operation(op: str, fixture: Fixture, connections: int, seconds: float) -> float:
    api, tokens = fixture.api.url, fixture.tokens
    if op == "post1":
        body = job_body(1)

        async def create(http: httpx.AsyncClient, i: int) -> httpx.Response:
            token = tokens[i // JOBS_PER_USER]
            answer = await http.post("/jobs", json=body, headers=fixture.auth(token))
            fixture.created.append((token, answer.json().get("id", "")))
            return answer

        try:
            return await rate(api, connections, create, status=201,
                              limit=len(tokens) * JOBS_PER_USER)
        finally:
            await fixture.cancel_created()
    if op == "batch":
        payloads = await fixture.batches()

        async def send(http: httpx.AsyncClient, i: int) -> httpx.Response:
            payload = payloads[i]
            return await http.post(payload["callback_url"], json=report_body(payload),
                                   headers={"Authorization": f"Bearer {payload['callback_token']}"})

        return await rate(api, connections, send, limit=len(payloads))

    async def view(http: httpx.AsyncClient, i: int) -> httpx.Response:
        token, job_id = fixture.finished[i % len(fixture.finished)]
        return await http.get(f"/jobs/{job_id}", headers=fixture.auth(token))

    return await rate(api, connections, view, seconds=seconds)


async def bare(url: str, connections: int, seconds: float, body: dict[str, Any] | None
               ) -> float:
    async def call(http: httpx.AsyncClient, _: int) -> httpx.Response:
        return await (http.get("/bare") if body is None else
                      http.post("/bare/any", content=json.dumps(body),
                                headers={"Content-Type": "application/json"}))

    return await rate(url, connections, call, seconds=seconds)


async def main(args: Any) -> list[Result]:
    ratios: dict[str, list[float]] = {op: [] for op in LABELS}
    rates: dict[str, list[float]] = {op: [] for op in [*LABELS, "bare"]}
    with stack() as bench:
        api = bench.api(args.processes, args.server)
        bare_app = bench.bare(args.processes, args.server)
        fixture = Fixture(bench, api, await users(
            bench, api, [f"http{i}" for i in range(args.users)]))
        # The report phase makes the finished jobs GET /jobs/{id} reads; so it goes first.
        sample = await fixture.batches()
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            for payload in sample:
                await report(http, payload, report_body(payload))
        bodies = {"post1": job_body(1), "batch": report_body(sample[0]), "get": None}
        for _ in range(args.rounds):
            for op in LABELS:
                before = await bare(bare_app.url, args.connections, args.seconds, bodies[op])
                measured = await operation(op, fixture, args.connections, args.seconds)
                after = await bare(bare_app.url, args.connections, args.seconds, bodies[op])
                rates[op].append(measured)
                ratios[op].append(measured / ((before + after) / 2))
                if bodies[op] is None:
                    rates["bare"] += [before, after]
    rows = [Row(label, round(median(rates[op]), 1), round(median(ratios[op]), 3),
                TARGETS.get(op), {"compared_with": "GET /bare" if op == "get" else
                                  "POST /bare/any, same body"})
            for op, label in LABELS.items()]
    return [Result(
        "http_api", f"HTTP: tollgate's endpoints against a bare Litestar app, {args.server} "
        f"x{args.processes}, {args.connections} connections", "requests/s",
        Row("bare Litestar app: GET /bare (POST rows: POST /bare/any, same body)",
            round(median(rates["bare"]), 1), 1.0), rows,
        {"server": args.server, "processes": args.processes, "connections": args.connections,
         "seconds": args.seconds, "rounds": args.rounds, "users": args.users}, args.quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--server", choices=["granian", "uvicorn"], default="granian")
    cli.add_argument("--processes", type=int, default=1)
    cli.add_argument("--connections", type=int, default=32)
    cli.add_argument("--users", type=int, default=20)
    cli.add_argument("--seconds", type=float, default=2.0)
    cli.add_argument("--rounds", type=int, default=2)
    args = cli.parse_args()
    if args.quick:
        args.users, args.seconds, args.rounds, args.connections = 1, 0.3, 1, 8
    run(main(args), args)
