"""The usage statement on a big history: 31 days by day, on PostgreSQL with 1 million jobs_log
rows (issue 20: under 50 ms at p95).

    python -m bench.usage_statement [--rows 1000000] [--calls 300] [--quick]

A fresh PostgreSQL database of its own (the harness's Stack), migrated by `tollgate migrate`,
gets `--rows` finished jobs in one INSERT ... SELECT FROM generate_series (seconds), spread
over the last 365 days: 10% belong to one heavy user, the rest to 100 users (about 9,000 a
year each, 760 in 31 days; the heavy user 8,500 in 31 days). VACUUM ANALYZE then leaves the
table as autovacuum leaves an insert-only table.

Rows (p95 in ms; ratio = the baseline's p95 / the row's, higher is better):
- the statement's SQL as GET /me/usage runs it (service.history.usage), for a user, for the
  heavy user and across users (GET /admin/usage), one call at a time;
- GET /me/usage over HTTP (`tollgate api`), one call at a time, JSON.
Baseline: the same user statement with index scans turned off (a sequential scan of the
table), as it ran before migration 0009.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench.harness import Result, Row, parser, percentile, run, stack

USERS = 100
HTTP_USERS = 8
HEAVY = "heavy"
DAYS = 365

# Row g (1..rows): job `bench-g`, of the heavy user when g % 10 = 0, else of u<g / 10 % 100>;
# it finished at :end minus a spread of up to 365 days; 1 to 8 items of price 1, one in 8
# failing. Every column jobs_log requires is set; the job's items list is left empty.
LOAD_SQL = """
INSERT INTO jobs_log (id, user_id, state, total_items, done_items, failed_items, price, cost,
                      charged, refunded, rule_id, model, items, reason, created_at, updated_at,
                      started_at, finished_at)
SELECT 'bench-' || g,
       CASE WHEN mod(g, 10) = 0 THEN 'heavy' ELSE 'u' || mod(g / 10, {users}) END,
       CASE WHEN failed = 1 THEN 'failed' ELSE 'done' END,
       n, n - failed, failed, 1, n, n - failed, failed, NULL,
       (ARRAY['thumbnail', 'caption', 'upscale'])[1 + mod(g, 3)],
       '[]'::jsonb, NULL, at - interval '2 seconds', at, at - interval '1 second', at
FROM generate_series(1, {rows}) AS g,
     LATERAL (SELECT 1 + mod(g, 8) AS n, (mod(g, 8) = 0)::int AS failed,
                     %(end)s::timestamptz - mod(g::bigint * 7919, {days} * 86400)
                       * interval '1 second' AS at) AS spread
"""


def load_jobs(conn: Any, rows: int, end: datetime, users: int = USERS, days: int = DAYS) -> None:
    """Inserts the rows on a psycopg connection (autocommit or not: the caller commits)."""
    conn.execute(LOAD_SQL.format(users=users, rows=int(rows), days=int(days)), {"end": end})


async def timed(call: Callable[[int], Awaitable[object]], calls: int) -> list[float]:
    latencies = []
    for index in range(calls):
        began = time.perf_counter()
        await call(index)
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def p95_row(label: str, latencies: list[float], baseline_p95: float) -> Row:
    p95 = percentile(latencies, 0.95)
    return Row(label, round(p95, 2), round(baseline_p95 / p95, 2) if p95 else None, None,
               {"p50_ms": round(percentile(latencies, 0.5), 2), "calls": len(latencies),
                "target_ms": 50})


async def main(rows: int, calls: int, quick: bool, postgres: str) -> list[Result]:
    import psycopg
    from sqlalchemy import text

    from service.history.engine import make_engine, make_session_factory
    from service.history.usage import usage_statement

    today = datetime.now(UTC).date()
    first, last = today - timedelta(days=30), today
    with stack(postgres) as bench:
        dsn = bench.database_url
        began = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            load_jobs(conn, rows, datetime.now(UTC))
            loaded = time.perf_counter() - began
            conn.execute("VACUUM ANALYZE jobs_log")
        prepared = time.perf_counter() - began
        print(f"{rows:,} rows loaded in {loaded:.1f} s (+ VACUUM ANALYZE: {prepared:.1f} s)")

        engine = make_engine(dsn)
        sessions = make_session_factory(engine)

        async def statement(user: str | None, *, seqscan: bool = False) -> None:
            async with sessions() as session:
                if seqscan:
                    for setting in ("indexscan", "indexonlyscan", "bitmapscan"):
                        await session.execute(text(f"SET enable_{setting} = off"))
                await usage_statement(session, user, first, last, "day")
                if seqscan:
                    await session.execute(text("RESET ALL"))

        def user(index: int, among: int = USERS) -> str:
            return f"u{index % among}"

        try:
            await timed(lambda i: statement(user(i)), 20)  # warm the pool and the cache
            baseline = await timed(lambda i: statement(user(i), seqscan=True),
                                   3 if quick else 15)
            query_user = await timed(lambda i: statement(user(i)), calls)
            query_heavy = await timed(lambda i: statement(HEAVY), calls)
            query_all = await timed(lambda i: statement(None), max(10, calls // 10))
        finally:
            await engine.dispose()

        api = bench.api(processes=1)
        names = [f"u{n}" for n in range(HTTP_USERS)] + [HEAVY]  # `tollgate token` each
        tokens = dict(zip(names, await bench.tokens(names), strict=True))
        span = {"from": first.isoformat(), "to": last.isoformat(), "group_by": "day"}
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            async def get(name: str) -> None:
                answer = await http.get("/me/usage", params=span,
                                        headers={"Authorization": f"Bearer {tokens[name]}"})
                assert answer.status_code == 200, answer.text
                assert answer.json()["items"], answer.text

            await timed(lambda i: get(user(i, HTTP_USERS)), 20)
            http_user = await timed(lambda i: get(user(i, HTTP_USERS)), calls)
            http_heavy = await timed(lambda i: get(HEAVY), calls)

    base_p95 = percentile(baseline, 0.95)
    in_31_days = rows * 31 // 365
    user_jobs, heavy_jobs = in_31_days * 9 // 10 // USERS, in_31_days // 10
    return [Result(
        "usage_statement", f"Usage statement, 31 days by day, {rows:,} jobs_log rows "
        "(PostgreSQL), p95", "ms (p95)",
        Row("the user statement as a sequential scan (no usage index)", round(base_p95, 2),
            1.0, None, {"p50_ms": round(percentile(baseline, 0.5), 2), "calls": len(baseline)}),
        [p95_row(f"statement SQL, a user (~{user_jobs:,} jobs in 31 days)", query_user, base_p95),
         p95_row(f"statement SQL, the heavy user (~{heavy_jobs:,} jobs)", query_heavy, base_p95),
         p95_row(f"statement SQL, every user (~{in_31_days:,} jobs)", query_all,
                 base_p95),
         p95_row("GET /me/usage, a user", http_user, base_p95),
         p95_row("GET /me/usage, the heavy user", http_heavy, base_p95)],
        {"rows": rows, "calls": calls, "load_s": round(loaded, 1),
         "load_and_vacuum_s": round(prepared, 1)}, quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--rows", type=int, default=1_000_000)
    cli.add_argument("--calls", type=int, default=300)
    args = cli.parse_args()
    rows, calls = (20_000, 30) if args.quick else (args.rows, args.calls)
    run(main(rows, calls, args.quick, args.postgres_dsn), args)
