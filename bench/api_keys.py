"""The API key check on the hot path: POST /jobs (1 item) with a JWT (baseline) and the same
call with an API key (`Authorization: Bearer tg_...`) whose spend cap reserve.lua checks.

    python -m bench.api_keys [--quick] [--users 20] [--connections 32] [--rounds 3]

One `tollgate api` (granian, 1 process) on a private redis-server and database. Each pro user
has a JWT and a key capped far above what the run spends. Phases alternate JWT, key, JWT, ...;
each phase makes `--users` x 10 jobs (the pro plan's concurrency) and cancels them off the
clock. A round's ratio is the key phase's rate over the mean of the JWT phases around it;
the row shows the median over rounds. Target: 0.9 (issue 20).
"""

from __future__ import annotations

from typing import Any

import httpx

from bench.harness import JOBS_PER_USER, Result, Row, job_body, median, parser, run, stack, users
from bench.http_api import rate

TARGET = 0.9


async def phase(url: str, credentials: list[str], connections: int) -> float:
    body = job_body(1)
    created: list[tuple[str, str]] = []

    async def create(http: httpx.AsyncClient, i: int) -> httpx.Response:
        secret = credentials[i // JOBS_PER_USER]
        answer = await http.post("/jobs", json=body, headers={"Authorization": f"Bearer {secret}"})
        created.append((secret, answer.json().get("id", "")))
        return answer

    try:
        return await rate(url, connections, create, status=201,
                          limit=len(credentials) * JOBS_PER_USER)
    finally:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for secret, job_id in created:
                await http.post(f"/jobs/{job_id}/cancel",
                                headers={"Authorization": f"Bearer {secret}"})


async def main(args: Any) -> list[Result]:
    with stack() as bench:
        api = bench.api(1, "granian")
        tokens = await users(bench, api, [f"key{i}" for i in range(args.users)])
        secrets: list[str] = []
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            for token in tokens:
                made = await http.post("/me/keys", headers={"Authorization": f"Bearer {token}"},
                                       json={"name": "bench", "spend_cap": {
                                           "credits": 10**12, "period": "day"}})
                assert made.status_code == 201, made.text
                secrets.append(made.json()["secret"])
        jwt_rates = [await phase(api.url, tokens, args.connections)]
        key_rates: list[float] = []
        ratios: list[float] = []
        for _ in range(args.rounds):
            key_rates.append(await phase(api.url, secrets, args.connections))
            jwt_rates.append(await phase(api.url, tokens, args.connections))
            ratios.append(key_rates[-1] / ((jwt_rates[-2] + jwt_rates[-1]) / 2))
    return [Result(
        "api_keys", "POST /jobs (1 item): an API key with a spend cap against a JWT",
        "requests/s", Row("JWT", round(median(jwt_rates), 1), 1.0),
        [Row("API key, capped", round(median(key_rates), 1), round(median(ratios), 3),
             TARGET, {"rounds": len(ratios)})],
        {"users": args.users, "connections": args.connections, "rounds": args.rounds},
        args.quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--users", type=int, default=20)
    cli.add_argument("--connections", type=int, default=32)
    cli.add_argument("--rounds", type=int, default=3)
    args = cli.parse_args()
    if args.quick:
        args.users, args.rounds, args.connections = 1, 1, 4
    run(main(args), args)
