"""What the request rate limit costs: GET /me with the limits off (baseline) and on.

    python -m bench.rate_limit [--seconds 3] [--tasks 16] [--rounds 2] [--quick]

Two `tollgate api` processes on one private redis-server and database, one with
TOLLGATE_RATE_LIMITS_ENABLED=0 and one with 1, loaded in turn (rounds alternate off, on) by
`--tasks` connections, each request as one of enough users that none runs out of its 600
reads a minute. Prints requests/s, p50 and Redis commands per request: with the limits on,
one more script call (rate_limit), sent in the same pipeline as the request's other calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from bench.harness import Result, Row, closed_loop, median, parser, run, stack, users


async def main(seconds: float, tasks: int, rounds: int, quick: bool) -> list[Result]:
    runs: dict[str, list[dict[str, float]]] = {"0": [], "1": []}
    with stack() as bench:
        apis = {flag: bench.api(TOLLGATE_RATE_LIMITS_ENABLED=flag) for flag in runs}
        names = [f"rl{n}" for n in range(tasks * 4)]
        tokens = await users(bench, apis["0"], names)
        headers = [{"Authorization": f"Bearer {token}"} for token in tokens]
        for _ in range(rounds):
            for flag, api in apis.items():
                async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
                    async def call(index: int, http: httpx.AsyncClient = http) -> None:
                        answer = await http.get("/me", headers=headers[index % len(headers)])
                        assert answer.status_code == 200, answer.text

                    await asyncio.gather(*(call(i) for i in range(len(headers))))  # warm
                    commands, _ = await asyncio.to_thread(bench.redis_stats)
                    timing = await closed_loop(call, tasks=tasks, seconds=seconds)
                    after, _ = await asyncio.to_thread(bench.redis_stats)
                runs[flag].append({"rate": timing.rate, "p50_ms": timing.percentile_ms(0.5),
                                   "redis_commands_per_request": (after - commands)
                                   / timing.calls})

    def summary(flag: str) -> dict[str, Any]:
        return {key: round(median([r[key] for r in runs[flag]]), 3) for key in runs[flag][0]}

    off, on = summary("0"), summary("1")
    ratios = [b["rate"] / a["rate"] for a, b in zip(runs["0"], runs["1"], strict=True)]
    return [Result("rate_limit", "GET /me with the request rate limits off and on",
                   "requests/s", Row("limits off", off["rate"], 1.0, None, off),
                   [Row("limits on", on["rate"], round(median(ratios), 3), None, on)],
                   {"seconds": seconds, "tasks": tasks, "rounds": rounds}, quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--seconds", type=float, default=3.0)
    cli.add_argument("--tasks", type=int, default=16)
    cli.add_argument("--rounds", type=int, default=2)
    args = cli.parse_args()
    seconds, rounds, tasks = (0.5, 1, 4) if args.quick else (args.seconds, args.rounds, args.tasks)
    run(main(seconds, tasks, rounds, args.quick), args)
