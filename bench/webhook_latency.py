"""Webhooks: from a job's finish to the first attempt of its `job.completed` delivery, with
every receiver answering (baseline) and with some of them hanging (issue 17, finding 5).

    python -m bench.webhook_latency [--quick] [--jobs 200] [--receivers 8] [--hanging 2]
                                    [--spread 5] [--hang 10]

`tollgate api` and `tollgate flusher` (which delivers webhooks) on a private redis-server,
TOLLGATE_WEBHOOK_ALLOW_PRIVATE=true and TOLLGATE_WEBHOOK_TIMEOUT=2. The receivers are HTTP
servers in this process. `--jobs` 1-item jobs, spread over users (so over buckets) and
round-robin over the receivers, each with a webhook; this process plays the worker and
finishes them evenly over `--spread` seconds. Latency: from the moment the report that
finished a job answered to the moment its delivery reached the receiver. In the row's
phase the first `--hanging` receivers hold every request `--hang` seconds. The ratio is the
baseline's p95 over the row's p95, both over the receivers that answer (1: a hanging
receiver delays nobody else).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx

from bench.harness import (
    JOBS_PER_USER,
    Result,
    Row,
    Stack,
    parser,
    percentile,
    ready_job,
    report,
    report_body,
    run,
    stack,
    take_batches,
    users,
)


class Receiver:
    """An HTTP/1.1 server that notes when each /hook/<n> arrived; hangs if told to."""

    def __init__(self, arrivals: dict[int, float], hang: float) -> None:
        self.arrivals, self.hang, self.url = arrivals, hang, ""
        self.server: asyncio.Server | None = None

    async def start(self) -> Receiver:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                path = head.split(" ", 2)[1]
                length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                               if line.lower().startswith("content-length:")), 0)
                await reader.readexactly(length)
                number = int(path.rsplit("/", 1)[1])
                self.arrivals.setdefault(number, time.perf_counter())
                if self.hang:
                    await asyncio.sleep(self.hang)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def phase(bench: Stack, url: str, tokens: list[str], args: Any, hanging: int
                ) -> dict[str, float]:
    arrivals: dict[int, float] = {}
    receivers = [await Receiver(arrivals, args.hang if r < hanging else 0).start()
                 for r in range(args.receivers)]
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            numbers = {}
            for n in range(args.jobs):
                hook = {"url": f"{receivers[n % args.receivers].url}/hook/{n}"}
                job_id = await ready_job(http, tokens[n % len(tokens)], 1, webhook=hook)
                numbers[job_id] = n
            payloads = await asyncio.to_thread(take_batches, bench, args.jobs)
            finished: dict[int, float] = {}
            gap = args.spread / args.jobs
            for payload in payloads:
                await report(http, payload, report_body(payload))
                finished[numbers[payload["job_id"]]] = time.perf_counter()
                await asyncio.sleep(gap)
        answering = [n for n in finished if n % args.receivers >= hanging]
        for _ in range(1200):  # a minute at most
            if all(n in arrivals for n in answering):
                break
            await asyncio.sleep(0.05)
    finally:
        for receiver in receivers:
            receiver.close()
    late = [(arrivals[n] - finished[n]) * 1000 for n in answering if n in arrivals]
    return {"p50_ms": round(percentile(late, 0.5), 1), "p95_ms": round(percentile(late, 0.95), 1),
            "max_ms": round(max(late, default=0.0), 1),
            "undelivered": len(answering) - len(late)}


async def main(args: Any) -> list[Result]:
    settings = {"TOLLGATE_WEBHOOK_ALLOW_PRIVATE": "true", "TOLLGATE_WEBHOOK_TIMEOUT": "2"}
    with stack(**settings) as bench:
        api = bench.api()
        bench.flusher()
        tokens = await users(bench, api, [f"wh{i}" for i in range(
            max(4, -(-args.jobs // JOBS_PER_USER)))])
        base = await phase(bench, api.url, tokens, args, 0)
        hung = await phase(bench, api.url, tokens, args, args.hanging)
    ratio = base["p95_ms"] / hung["p95_ms"] if hung["p95_ms"] else 0.0
    return [Result(
        "webhook_latency", f"Webhooks: finish to first delivery attempt, {args.jobs} jobs over "
        f"{args.receivers} receivers, {args.hanging} of them hanging {args.hang:g} s",
        "p95 ms (lower is better)", Row("every receiver answers", base["p95_ms"], 1.0, None, base),
        [Row(f"{args.hanging} receivers hang (answering ones shown)", hung["p95_ms"],
             round(ratio, 3), 0.5, hung)],
        {"jobs": args.jobs, "receivers": args.receivers, "hanging": args.hanging,
         "spread_s": args.spread, "hang_s": args.hang}, args.quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--jobs", type=int, default=200)
    cli.add_argument("--receivers", type=int, default=8)
    cli.add_argument("--hanging", type=int, default=2)
    cli.add_argument("--spread", type=float, default=5.0)
    cli.add_argument("--hang", type=float, default=10.0)
    args = cli.parse_args()
    if args.quick:
        args.jobs, args.receivers, args.hanging, args.spread, args.hang = 12, 4, 1, 1.0, 3.0
    run(main(args), args)
