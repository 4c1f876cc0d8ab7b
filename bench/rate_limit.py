"""What the request rate limit costs: GET /me with the limits off (baseline) and on.

    python bench/rate_limit.py [--seconds 3] [--tasks 16] [--rounds 2] [--quick]

The real app (`create_app`) runs in this process, called through httpx's ASGI transport
(no sockets, so the difference is tollgate's own), on a private redis-server whose command
statistics then hold nothing but the benchmark's. Rounds alternate off and on. Prints
ops/s, p50 latency, this process's CPU per request and scripts (EVALSHA) per request: with
the limits on, one more (rate_limit), which the AutoPipeline sends in the same batch as the
other requests' commands of that loop turn.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):  # run as `python bench/rate_limit.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from redis.asyncio import Redis

from bench.common import (
    Baseline,
    Result,
    Row,
    base_parser,
    closed_loop,
    machine_info,
    median,
    run_and_report,
)
from bench.stack import private_redis
from service.api.app import create_app
from service.api.auth import issue_token
from service.history.engine import run_migrations
from service.settings import Settings

SECRET = "bench-secret-" + "x" * 32


async def measure(redis_url: str, folder: str, *, limits: bool, seconds: float, tasks: int
                  ) -> dict[str, float]:
    settings = Settings(redis_url=redis_url, queue_redis_url=redis_url, jwt_secret=SECRET,
                        database_url=f"sqlite:///{folder}/t.db", storage_dir=folder,
                        rate_limits_enabled=limits, key_prefix=f"tgb{int(limits)}")
    run_migrations(settings.database_url)
    app = create_app(settings)
    counter = Redis.from_url(redis_url)
    # Users enough that none runs out of its 600 reads a minute in a run of a few seconds.
    users = [f"bench-{n}" for n in range(tasks * 8)]
    headers = [{"Authorization": f"Bearer {issue_token(SECRET, u)}"} for u in users]
    async with app.lifespan(), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=cast(Any, app)), base_url="http://bench") as client:
        for header in headers:  # provision every user before the clock starts
            assert (await client.get("/me", headers=header)).status_code == 200

        async def call(index: int) -> None:
            response = await client.get("/me", headers=headers[index % len(headers)])
            assert response.status_code == 200, response.text

        await counter.config_resetstat()
        timing = await closed_loop(call, tasks=tasks, seconds=seconds)
        stats = await counter.info("commandstats")
    await counter.aclose()
    # Calls the API sent: scripts count once (EVALSHA), not the commands they run inside.
    scripts = stats.get("cmdstat_evalsha", {}).get("calls", 0)
    return {"ops": timing.ops_per_s, "p50_ms": timing.percentile_ms(0.5),
            "cpu_us": timing.cpu_us_per_call, "scripts": scripts / timing.calls}


async def main(seconds: float, tasks: int, rounds: int, quick: bool) -> Result:
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with private_redis() as redis_url, tempfile.TemporaryDirectory() as folder:
        for _ in range(rounds):
            for limits in (False, True):
                runs[limits].append(await measure(redis_url, folder, limits=limits,
                                                  seconds=seconds, tasks=tasks))

    def summary(limits: bool) -> dict[str, Any]:
        return {key: round(median([r[key] for r in runs[limits]]), 3)
                for key in ("ops", "p50_ms", "cpu_us", "scripts")}

    off, on = summary(False), summary(True)
    ratios = [b["ops"] / a["ops"] for a, b in zip(runs[False], runs[True], strict=True)]
    return Result(
        name="rate_limit", title="GET /me with the request rate limits off and on",
        machine=machine_info(), params={"seconds": seconds, "tasks": tasks, "rounds": rounds},
        baseline=Baseline("limits off", off["ops"], off),
        rows=[Row("limits on", on["ops"], median(ratios), None, on)], quick=quick)


if __name__ == "__main__":
    parser = base_parser(__doc__ or "")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    seconds, rounds = (0.5, 1) if args.quick else (args.seconds, args.rounds)
    run_and_report(main(seconds, args.tasks, rounds, args.quick), args.out,
                   [("p50_ms", "p50 ms"), ("cpu_us", "CPU µs/req"),
                    ("scripts", "scripts/req")])
