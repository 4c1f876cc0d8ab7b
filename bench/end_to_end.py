"""End to end: jobs/s through real `tollgate worker` processes with the no-op processor, as a
ratio to the same workers running plain RQ jobs that make the same storage transfers; then
the flusher's jobs_log rows/s into PostgreSQL, as a ratio to writing the same rows with SQL
alone.

    python -m bench.end_to_end [--quick] [--workers 1,2,4] [--jobs 32] [--items 8]
                               [--repeats 3] [--api-processes 1] [--fork] [--flusher-only]

Per worker count: `--jobs` x `--repeats` jobs are created, uploaded, confirmed and executed
over HTTP while no worker runs; their batches are taken off the queue (so each job's batch
payload, with its signed URLs, is known), then N `tollgate worker` processes start. Legs
alternate, baseline first and last:
  baseline   one plain RQ job per batch on the same queue and workers (`transfer_task`):
             download every input from its signed URL, PUT it to its output URL; no
             tollgate call. Timed from the first enqueue to the last finish.
  tollgate   POST /jobs/{id}/execute again for the leg's jobs (a queued job whose batch is
             gone is dispatched again), timed until every job reads `done` over HTTP.
A tollgate leg's ratio is its jobs/s over the mean of the baseline legs around it; the row
shows the median (target 0.8).

Flusher: the run's finished jobs wait in Redis (no flusher ran); then `tollgate flusher`
starts, timed from the end of its start-up (its log line `safety net: ...`, written once the
first safety net read every bucket and its first SQL connection is open, just before its
first pass) to the last jobs_log row: the pass's claims, Redis reads, row building and SQL
writes. Baseline: the same rows read back and written by SQL alone (executemany into tables
LIKE jobs_log and credit_ledger, one transaction per TOLLGATE_FLUSH_BATCH jobs, on a
connection already open). `--flusher-only` skips the worker legs: the jobs are finished by
a played worker (each batch taken off the queue and reported done over the callback).
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench.harness import (
    JOBS_PER_USER,
    Proc,
    Result,
    Row,
    Stack,
    median,
    parser,
    ready_job,
    report,
    report_body,
    run,
    stack,
    take_batches,
    tollgate,
    users,
)

PROCESSOR = "workers.processors.noop:passthrough"
TARGET = 0.8  # issue 11: at least 0.8 of the same workers making the transfers alone
FLUSH_BATCH = 200
# Main since issue 21: executed jobs wait in tollgate's order and a dispatcher feeds RQ. Before
# it (the "before" of its cost targets) execute enqueued at once; the bench runs on both.
SCHEDULED = importlib.util.find_spec("service.flusher.dispatcher") is not None
# The legs' waits all come from this one address (see tollgate_leg).
WAITS = {"TOLLGATE_CLIENT_MAX_IN_FLIGHT": "1024"}
HTTP = httpx.Client(timeout=60)  # one per worker process, as the worker's own


def transfer_task(payload: dict[str, Any]) -> int:
    """The baseline's RQ job: a batch's storage transfers, side by side on one shared HTTP
    client (as a worker makes them), nothing else."""
    def move(item: dict[str, Any]) -> None:
        data = HTTP.get(item["input_url"]).raise_for_status().content
        HTTP.put(item["output_url"], content=data).raise_for_status()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(move, payload["items"]))
    return len(payload["items"])


def rq_queue(bench: Stack) -> Any:
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    return Queue(bench.queue, connection=redis.Redis.from_url(bench.redis_url),
                 serializer=JSONSerializer)


async def baseline_leg(bench: Stack, payloads: list[dict[str, Any]], tag: str) -> float:
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    queue = rq_queue(bench)
    finished, failed = FinishedJobRegistry(queue=queue), FailedJobRegistry(queue=queue)
    before = finished.count
    start = time.perf_counter()
    for i, payload in enumerate(payloads):
        queue.enqueue_call("bench.end_to_end.transfer_task", args=(payload,),
                           job_id=f"base-{tag}-{i}", result_ttl=600)
    while finished.count < before + len(payloads):
        if failed.count:
            job = queue.fetch_job(failed.get_job_ids()[0])
            raise RuntimeError("a baseline RQ job failed:\n"
                               + ((job.latest_result().exc_string or "") if job
                                  and job.latest_result() else "")[-1500:])
        await asyncio.sleep(0.005)
    return len(payloads) / (time.perf_counter() - start)


def command_usec(bench: Stack) -> dict[str, tuple[int, int]]:
    """INFO commandstats of the run's redis-server: command -> (calls, usec) so far."""
    import redis

    with redis.Redis.from_url(bench.redis_url) as client:
        stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in stats.items()}


def top_commands(spent: dict[str, list[int]], items: int, count: int = 8
                 ) -> dict[str, list[float]]:
    """The commands that took the most Redis time: command -> [calls, usec] per item."""
    ranked = sorted(spent.items(), key=lambda kv: -kv[1][1])[:count]
    return {name: [round(calls / items, 2), round(usec / items, 1)]
            for name, (calls, usec) in ranked}


async def tollgate_leg(http: httpx.AsyncClient, jobs: list[tuple[str, str]], items: int
                       ) -> float:
    """Executes the leg's jobs and waits for each with `Prefer: wait` (a user holds at most
    10 waits: JOBS_PER_USER jobs each), as a client that wants the result would; timed until
    the last answers done."""
    start = time.perf_counter()
    for token, job_id in jobs:
        answer = await http.post(f"/jobs/{job_id}/execute",
                                 headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 202, answer.text

    async def final(token: str, job_id: str) -> dict[str, Any]:
        while True:
            view: dict[str, Any] = (await http.get(f"/jobs/{job_id}", headers={
                "Authorization": f"Bearer {token}", "Prefer": "wait=60"})).json()
            if view["status"] in ("done", "failed", "canceled", "expired"):
                return view

    views = await asyncio.gather(*(final(token, job_id) for token, job_id in jobs))
    bad = [v["id"] for v in views if v["status"] != "done" or v["done_items"] != items]
    if bad:
        raise RuntimeError(f"jobs did not end done with {items} items: {bad[:3]}")
    return len(jobs) / (time.perf_counter() - start)


async def drain(bench: Stack) -> None:
    """Hands every waiting batch to RQ now, whatever workers are live (before issue 21,
    execute had already)."""
    if not SCHEDULED:
        return
    from service.flusher.dispatcher import Dispatcher
    from service.runtime import open_runtime
    from service.settings import Settings

    settings = Settings(**{k.removeprefix("TOLLGATE_").lower(): v
                           for k, v in bench.env().items() if k.startswith("TOLLGATE_")})
    rt = await open_runtime(settings, settings.jwt_secret or "")
    try:
        once = Dispatcher(rt, fixed_room=1_000_000)
        await once.pass_once()
        await once.release()  # the legs' dispatchers fill the queue at once
    finally:
        await rt.close()


async def wait_for_workers(bench: Stack, count: int) -> None:
    from rq import Worker

    queue = rq_queue(bench)
    deadline = time.monotonic() + 60
    while len(Worker.all(queue=queue)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers never registered")
        await asyncio.sleep(0.1)


def cpu_now(bench: Stack, parts: dict[str, list[Proc]]) -> dict[str, float]:
    """CPU seconds so far of each part of the system (its processes and their children),
    the private redis-server, and this bench process (the client)."""
    times = os.times()
    return {**{name: sum(proc.cpu() for proc in procs) for name, procs in parts.items()},
            "redis": bench.redis_stats()[1], "bench client": times.user + times.system}


def cpu_per_job(before: dict[str, float], after: dict[str, float], jobs: int
                ) -> dict[str, float]:
    spent = {name: (after[name] - before[name]) / jobs * 1000 for name in after}
    return {**{name: round(ms, 2) for name, ms in spent.items()},
            "total": round(sum(spent.values()), 2)}


async def worker_rows(bench: Stack, api: Proc, args: Any
                      ) -> tuple[list[Row], dict[int, float], dict[int, Any]]:
    per_round = args.jobs * args.repeats
    names = [f"e2e{i}" for i in range(math.ceil(per_round / JOBS_PER_USER))]
    tokens = await users(bench, api, names)
    # The baseline's payloads come from donor jobs of users of their own: executed, handed to
    # RQ while no worker runs, taken off it, and left live (a finished job's files refuse
    # transfers).
    donor_tokens = await users(bench, api, [f"e2d{i}" for i in range(len(names))])
    rows, baselines = [], {}
    top: dict[int, dict[str, list[float]]] = {}
    gate = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=api.url, timeout=60,
                                 limits=httpx.Limits(max_connections=256)) as http:

        async def ready(owner: str, execute: bool) -> str:
            async with gate:
                return await ready_job(http, owner, args.items, execute=execute)

        for count in args.worker_counts:
            owners = [tokens[i // JOBS_PER_USER] for i in range(per_round)]
            donors = [donor_tokens[i // JOBS_PER_USER] for i in range(per_round)]
            donated = await asyncio.gather(*(ready(donor, True) for donor in donors))
            await drain(bench)
            payloads = await asyncio.to_thread(take_batches, bench, per_round)
            ids = await asyncio.gather(*(ready(owner, False) for owner in owners))
            by_job = dict(zip(ids, payloads, strict=True))
            workers = [bench.worker(api, PROCESSOR, *(["--fork"] if args.fork else []))
                       for _ in range(count)]
            await wait_for_workers(bench, count)
            dispatchers = [bench.start("tollgate dispatcher", tollgate("dispatcher"))
                           ] if SCHEDULED else []
            jobs = list(zip(owners, ids, strict=True))
            parts = {"workers": workers, "api": [api], "dispatcher": dispatchers}
            # CPU ms per job of each part, per leg (a CPU second is the same at any load).
            base_parts: list[dict[str, float]] = []
            leg_parts: list[dict[str, float]] = []
            bases, legs, base_cpu, leg_cpu, leg_calls = [], [], [], [], []
            spent: dict[str, list[int]] = {}  # the tollgate legs' Redis commands
            for leg in range(args.repeats + 1):
                mine = jobs[min(leg, args.repeats - 1) * args.jobs:][:args.jobs]
                items = len(mine) * args.items
                calls, cpu = bench.redis_stats()
                began = cpu_now(bench, parts)
                bases.append(await baseline_leg(bench, [by_job[j] for _, j in mine],
                                                f"{count}-{leg}"))
                calls_after, cpu_after = bench.redis_stats()
                ended = cpu_now(bench, parts)
                base_parts.append(cpu_per_job(began, ended, len(mine)))
                base_cpu.append((cpu_after - cpu) / items * 1e6)
                if leg < args.repeats:
                    commands = command_usec(bench)
                    began = cpu_now(bench, parts)
                    legs.append(await tollgate_leg(http, mine, args.items))
                    leg_parts.append(cpu_per_job(began, cpu_now(bench, parts), len(mine)))
                    for name, (n, usec) in command_usec(bench).items():
                        was = commands.get(name, (0, 0))
                        total = spent.setdefault(name, [0, 0])
                        total[0] += n - was[0]
                        total[1] += usec - was[1]
                    calls, cpu = bench.redis_stats()
                    leg_cpu.append((cpu - cpu_after) / items * 1e6)
                    leg_calls.append((calls - calls_after) / items)
            for worker in [*workers, *dispatchers]:
                worker.stop()
            for donor, job_id in zip(donors, donated, strict=True):
                await http.post(f"/jobs/{job_id}/cancel",
                                headers={"Authorization": f"Bearer {donor}"})
            ratios = [rate / ((bases[i] + bases[i + 1]) / 2) for i, rate in enumerate(legs)]
            baselines[count] = median(bases)
            rows.append(Row(f"tollgate, {count} worker{'s' * (count > 1)}", median(legs),
                            round(median(ratios), 3), TARGET,
                            {"items_per_s": round(median(legs) * args.items, 1),
                             "rq_alone_jobs_per_s": round(baselines[count], 2),
                             # The one redis-server (state and RQ) during the legs, per item.
                             "redis_cpu_us_per_item": round(median(leg_cpu), 1),
                             "rq_alone_redis_cpu_us_per_item": round(median(base_cpu), 1),
                             "redis_calls_per_item": round(median(leg_calls), 1),
                             "leg_ratios": ", ".join(f"{r:.2f}" for r in ratios),
                             "cpu_ms_per_job_rq_alone": _shown(_median_parts(base_parts)),
                             "cpu_ms_per_job_tollgate": _shown(_median_parts(leg_parts)),
                             # Were the cores the limit? CPU seconds a second, both legs.
                             "cores_busy_rq_alone": round(
                                 _median_parts(base_parts)["total"] * baselines[count] / 1000,
                                 2),
                             "cores_busy_tollgate": round(
                                 _median_parts(leg_parts)["total"] * median(legs) / 1000, 2)}))
            top[count] = top_commands(spent, args.repeats * args.jobs * args.items)
    return rows, baselines, top


def _shown(parts: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms}" for name, ms in parts.items())


def _median_parts(legs: list[dict[str, float]]) -> dict[str, float]:
    return {name: round(median([leg[name] for leg in legs]), 2) for name in legs[0]}


async def sql_count(conn: Any, table: str) -> int:
    row = await (await conn.execute(f"SELECT count(*) FROM {table}")).fetchone()
    return int(row[0])


def adapt(rows: list[Any]) -> list[list[Any]]:
    """Rows read back, ready to be written again (JSON columns as JSON)."""
    from psycopg.types.json import Jsonb

    return [[Jsonb(v) if isinstance(v, dict | list) else v for v in row] for row in rows]


async def flusher_result(bench: Stack, jobs: int, quick: bool) -> Result:
    import psycopg

    dsn = bench.database_url
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        ledger_before = await sql_count(conn, "credit_ledger")
        flusher = bench.flusher(TOLLGATE_FLUSH_BATCH=str(FLUSH_BATCH))
        deadline = time.monotonic() + 300
        # Timed from the end of its start-up (the first safety net reads every bucket; it
        # logs when done, just before its first pass takes the due buckets) to the last
        # jobs_log row: the whole pass (claims, Redis reads, the SQL write), not the
        # start-up, which is no row's cost. Polled every millisecond.
        while ("safety net: " if SCHEDULED else "flusher: ") not in flusher.output():
            if time.monotonic() > deadline or not flusher.alive():
                raise RuntimeError(f"the flusher did not start:\n{flusher.output()[-2000:]}")
            await asyncio.sleep(0.001)
        start = time.perf_counter()
        while (rows := await sql_count(conn, "jobs_log")) < jobs:
            if time.monotonic() > deadline or not flusher.alive():
                raise RuntimeError(f"flushed {rows} of {jobs}:\n{flusher.output()[-2000:]}")
            await asyncio.sleep(0.001)
        seconds = time.perf_counter() - start
        jobs_timed = jobs
        for _ in range(300):  # its pass ends (deletes, then its log line) after the commit
            if "flusher pass: " in flusher.output():
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.5)  # and any further pass
        passes = flusher.output().count("flusher pass: ")
        flusher.stop()
        ledger = await sql_count(conn, "credit_ledger") - ledger_before
        # SQL alone: the same rows, read back and written again in batches.
        job_rows = adapt(await (await conn.execute("SELECT * FROM jobs_log")).fetchall())
        ledger_rows = adapt(await (await conn.execute(
            "SELECT * FROM credit_ledger ORDER BY 1 DESC LIMIT %s", (ledger,))).fetchall())
        await conn.execute("CREATE TABLE bench_jobs (LIKE jobs_log INCLUDING ALL)")
        await conn.execute("CREATE TABLE bench_ledger (LIKE credit_ledger INCLUDING ALL)")
        per_job = max(1, math.ceil(len(ledger_rows) / max(1, len(job_rows))))
        start = time.perf_counter()
        for at in range(0, len(job_rows), FLUSH_BATCH):
            chunk = job_rows[at:at + FLUSH_BATCH]
            entries = ledger_rows[at * per_job:(at + len(chunk)) * per_job]
            async with conn.transaction(), conn.cursor() as cursor:
                await cursor.executemany(
                    f"INSERT INTO bench_jobs VALUES ({', '.join(['%s'] * len(chunk[0]))})",
                    chunk)
                if entries:
                    await cursor.executemany(
                        "INSERT INTO bench_ledger VALUES "
                        f"({', '.join(['%s'] * len(entries[0]))})", entries)
        sql_seconds = time.perf_counter() - start
    sql_rate = len(job_rows) / sql_seconds
    rate = jobs_timed / seconds
    return Result(
        "flusher", f"Flusher: jobs_log rows/s into PostgreSQL from {jobs} finished jobs, "
        "ratio to writing the same rows with SQL alone", "jobs_log rows/s",
        Row("SQL alone: same rows and transactions", round(sql_rate, 1), 1.0, None,
            {"seconds": round(sql_seconds, 3), "transactions": math.ceil(
                len(job_rows) / FLUSH_BATCH)}),
        [Row("tollgate flusher", round(rate, 1), round(rate / sql_rate, 3), None,
             {"seconds": round(seconds, 3), "ledger_rows": ledger, "passes": passes})],
        {"jobs": jobs, "flush_batch": FLUSH_BATCH}, quick)


async def finished_jobs(bench: Stack, api: Proc, args: Any) -> int:
    """`--flusher-only`: jobs x repeats jobs finished by a played worker (each batch taken
    off the queue and reported done over the callback), 10 per user; returns the count."""
    count = int(args.jobs * args.repeats)
    tokens = await users(bench, api, [f"fl{i}" for i in range(math.ceil(count / JOBS_PER_USER))])
    gate = asyncio.Semaphore(16)

    async def one(http: httpx.AsyncClient, token: str) -> str:
        async with gate:
            return await ready_job(http, token, args.items)

    async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
        await asyncio.gather(*(one(http, tokens[i // JOBS_PER_USER]) for i in range(count)))
        for payload in await asyncio.to_thread(take_batches, bench, count):
            await report(http, payload, report_body(payload))
    return count


async def main(args: Any) -> list[Result]:
    if args.flusher_only:
        with stack(args.postgres_dsn, TOLLGATE_FLUSH_DELAY="0", **WAITS) as bench:
            jobs = await finished_jobs(bench, bench.api(args.api_processes), args)
            return [await flusher_result(bench, jobs, args.quick)]
    load = [round(v, 2) for v in os.getloadavg()]  # the machine's, as the run starts
    with stack(args.postgres_dsn, TOLLGATE_FLUSH_DELAY="0", **WAITS) as bench:
        api = bench.api(args.api_processes)
        bench.dispatching = True  # worker_rows drains to RQ itself and times its own dispatchers
        rows, baselines, top = await worker_rows(bench, api, args)
        flusher = await flusher_result(
            bench, args.jobs * args.repeats * len(args.worker_counts), args.quick)
    first = args.worker_counts[0]
    workers = Result(
        "end_to_end", f"End to end: jobs/s, no-op processor, {args.items}-item jobs, "
        f"{'forking' if args.fork else 'in-process'} workers; ratio to the same RQ workers "
        "making the same storage transfers alone", "jobs/s",
        Row(f"RQ alone, same transfers ({first} worker{'s' * (first > 1)})",
            round(baselines[first], 2), 1.0, None,
            {"by_workers": ", ".join(f"{k}: {v:.1f}" for k, v in baselines.items())}),
        rows, {"jobs": args.jobs, "items": args.items, "repeats": args.repeats,
               "workers": args.worker_counts, "api_processes": args.api_processes,
               "processor": PROCESSOR, "scheduled": SCHEDULED, "loadavg_before": load,
               # Per worker count: the commands that took the most Redis time during the
               # tollgate legs, [calls, usec] per item (INFO commandstats).
               "redis_top_commands_per_item": top}, args.quick)
    return [workers, flusher]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--workers", default=None, help="worker counts (default 1,2,4; 1 quick)")
    cli.add_argument("--jobs", type=int, default=0, help="jobs a leg (default 32; 4 quick)")
    cli.add_argument("--items", type=int, default=8)
    cli.add_argument("--repeats", type=int, default=0, help="tollgate legs (default 3; 1)")
    cli.add_argument("--api-processes", type=int, default=1)
    cli.add_argument("--fork", action="store_true", help="workers with --fork")
    cli.add_argument("--flusher-only", action="store_true",
                     help="only the flusher table: jobs finished by a played worker")
    args = cli.parse_args()
    args.worker_counts = [int(n) for n in (args.workers or ("1" if args.quick else "1,2,4"))
                          .split(",")]
    args.jobs = args.jobs or (4 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 3)
    run(main(args), args)
