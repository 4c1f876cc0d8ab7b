"""End to end: jobs/s and items/s through real `tollgate worker` processes with the no-op
processor, as a ratio to the same RQ workers running batches that make the same storage
transfers without any tollgate call; flusher rows/s into PostgreSQL, as a ratio to writing the
same rows with SQL alone; Redis memory per live and per finished, not yet flushed job.

    python bench/end_to_end.py [--quick] [--workers 1,2,4] [--jobs 24] [--items 8]
                               [--flush-jobs 2000] [--api-processes 1] [--repeats 3]
                               [--fork] [--flusher-only]

Workers: real Redis, a fresh PostgreSQL database, local-folder storage, the API as a real
server subprocess (`python -m service.cli.main api`, granian, `--api-processes`), and N
`python -m service.cli.main worker` processes: in-process workers (the default of `tollgate
worker`: setup() once, no fork per batch; `--fork` measures the forking mode instead), the
processor `workers.processors.noop:passthrough`. Every job of the run, `--items` items each (one RQ
batch at the default batch size of 8), is created, uploaded and confirmed through the API
before any clock starts. A tollgate leg runs `--jobs` of them: its clock runs from the first
POST /jobs/{id}/execute to the moment every job is terminal (polled in Redis, not through
the API). Each batch downloads its inputs (side by side), runs the processor, uploads the
outputs (side by side) and reports the batch in one request (`event: "items"`), after its
`started` report.

The baseline, with the same worker processes on the same queue in the same round: a leg of
as many RQ jobs running `transfer_task` below, enqueued directly, timed from the first
enqueue to the last finish. Each downloads the same 8 inputs through URLs signed as the API
signs them for workers (`internal=True`), with the worker's own HTTP client and download
code, and uploads the same bytes to output URLs signed the same way: the batch's storage
transfers, without any tollgate call (no execute, no `started` or `items` report, no Lua).
With local-folder storage those transfers are served by the API process's /files routes,
as in the tollgate run. Per worker count the legs alternate, baseline first and last
(`--repeats` tollgate legs); a tollgate leg's ratio is its jobs/s over the mean of the two
baseline legs around it, and the row's ratio is the median over its legs (target 0.8). On
2 CPUs the API, Redis and the workers share the cores; the row says how many.

Flusher: `--flush-jobs` finished 8-item jobs created through `service.state.store.Core` on real
Redis (reserve, transition, item_result; replayed in pipelines), then `service.sweeper.
flush_once` passes until nothing is left, into the fresh database. Baseline: the same rows
(jobs_log and credit_ledger, built from the same Redis records) written by the same SQL
functions in the same transactions (one per bucket), without Redis.

`--flusher-only` runs the flusher and memory part alone (no API, no worker processes).

Memory: the sum of MEMORY USAGE (SAMPLES 0) over every key of the run's prefix, before and
after the jobs reach each state, divided by the number of jobs; immune to other programs
using the same Redis, unlike INFO used_memory.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/end_to_end.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Baseline,
    Result,
    Row,
    fresh_prefix,
    machine_info,
    median,
    report,
    stack_parser,
)
from bench.stack import ApiClient

NAME = "end_to_end"
PROCESSOR = "workers.processors.noop:passthrough"
CREDITS = 10**9  # fits credit_ledger.amount (a 32-bit INTEGER column)
JOBS_PER_USER = 10  # the pro plan's concurrency
TARGET = 0.8  # issue 11: items/s at least 0.8 of the same workers making the transfers alone
PAYLOAD = b"\x89PNG\r\n\x1a\n" + b"0" * 1016  # 1 KiB per input


def transfer_task(payload: dict[str, Any]) -> int:
    """The RQ baseline's job function: one batch's storage transfers as the worker makes
    them (workers.jobs' download and upload, side by side, on its shared HTTP client), the
    downloaded bytes uploaded as the outputs; no callback, no other tollgate call.
    Returns the number of items moved both ways; raises if any transfer failed."""
    from service.contract import BatchItem
    from workers.callbacks import RetryingClient
    from workers.jobs import download, in_parallel, shared_http, upload
    from workers.processors import Item, Output

    http = RetryingClient(shared_http())
    specs = [BatchItem(**item) for item in payload["items"]]
    fetched = in_parallel(lambda spec: download(http, spec), specs)
    outputs = [Output(item.index, item.data, item.content_type) if isinstance(item, Item)
               else item for item in fetched]
    uploaded = in_parallel(lambda pair: upload(http, pair[0], pair[1]),
                           list(zip(specs, outputs, strict=True)))
    failed = [out.error for out in uploaded if out.error is not None]
    if failed:
        raise RuntimeError(f"baseline transfers failed: {failed[:3]}")
    return len(uploaded)


@dataclass(frozen=True, slots=True)
class Params:
    workers: tuple[int, ...]
    jobs: int
    items: int
    api_server: str
    api_processes: int
    flush_jobs: int
    repeats: int = 1
    fork: bool = False


# --- the worker part ---------------------------------------------------------------------------

def signing_client(url: str, secret: str) -> ApiClient:
    """The API over HTTP, with tokens signed here from the stack's secret."""
    from service.api.auth import issue_token

    return ApiClient(url, issue_token(secret, "bench-admin", admin=True),
                     lambda user: issue_token(secret, user, ttl_s=3600))


@dataclass(slots=True)
class Run:
    jobs: int
    items: int
    seconds: float
    cpu: dict[str, float]

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds


class CpuMeter:
    """CPU seconds of the API and worker process trees and of Redis over a stretch."""

    def __init__(self, api: Any, workers: list[Any], redis: Any) -> None:
        self.api, self.workers, self.redis = api, workers, redis

    async def read(self) -> dict[str, float]:
        from bench.stack import process_cpu

        info = await self.redis.info("cpu")
        return {"api": sum(process_cpu(p) for p in self.api.pids()),
                # Work-horses come and go: a finished one's CPU is in its worker's
                # cutime/cstime (the worker waits for it); none runs at either reading.
                "workers": sum(process_cpu(w.pid, reaped_children=True)
                               for w in self.workers if w.alive()),
                "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"])}

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float], seconds: float
              ) -> dict[str, float]:
        return {k: round((after[k] - before[k]) / seconds, 2) for k in before}


async def wait_for_workers(queue: Any, count: int) -> None:
    from rq import Worker

    deadline = time.monotonic() + 60
    while len(await asyncio.to_thread(Worker.all, queue=queue)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} RQ workers never registered on {queue.name}")
        await asyncio.sleep(0.1)


def baseline_payloads(stack: Any, api_url: str, job_ids: list[str], items: int,
                      round_no: int) -> list[dict[str, Any]]:
    """One batch payload per job: its uploaded inputs and fresh output keys, signed as the
    API signs a batch's URLs for workers (service.dispatch)."""
    from dataclasses import asdict as as_dict

    from service.contract import BatchItem, input_key
    from service.runtime import storage_secret
    from service.storage import make_storage

    settings = stack.settings(public_url=api_url)
    storage = make_storage(settings, storage_secret(stack.secret))
    ttl = settings.hold_ttl + settings.result_url_ttl
    payloads = []
    try:
        for job_id in job_ids:
            batch = []
            for index in range(items):
                out = f"bench/{job_id}/round{round_no}/out/{index}"
                batch.append(as_dict(BatchItem(
                    index=index, name=f"img-{index}.png", content_type="image/png",
                    input_url=storage.presign_download(input_key(job_id, index), ttl,
                                                       internal=True),
                    output_url=storage.presign_upload(out, None, settings.max_item_size, ttl,
                                                      internal=True).url,
                    output_key=out)))
            payloads.append({"items": batch})
    finally:
        storage.close()
    return payloads


def merged(runs: list[Run]) -> Run:
    """Several legs as one: their jobs over their summed time, their mean cores."""
    return Run(sum(r.jobs for r in runs), sum(r.items for r in runs),
               sum(r.seconds for r in runs),
               {k: round(sum(r.cpu[k] for r in runs) / len(runs), 2) for k in runs[0].cpu})


async def rq_baseline(queue: Any, prefix: str, round_no: int, payloads: list[dict[str, Any]],
                      items: int, meter: CpuMeter) -> Run:
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    jobs = len(payloads)
    finished = FinishedJobRegistry(queue=queue)
    failed = FailedJobRegistry(queue=queue)
    done_before = finished.count
    cpu = await meter.read()
    start = time.perf_counter()

    def enqueue() -> None:
        for i, payload in enumerate(payloads):
            queue.enqueue_call("bench.end_to_end.transfer_task", args=(payload,),
                               job_id=f"{prefix}-rq-{round_no}-{i}", result_ttl=600)

    await asyncio.to_thread(enqueue)
    while await asyncio.to_thread(lambda: finished.count) < done_before + jobs:
        if await asyncio.to_thread(lambda: failed.count):
            raise RuntimeError("an RQ baseline job failed")
        await asyncio.sleep(0.005)
    seconds = time.perf_counter() - start
    return Run(jobs, jobs * items, seconds, CpuMeter.cores(cpu, await meter.read(), seconds))


async def tollgate_run(client: ApiClient, redis: Any, keys: Any, jobs: list[tuple[str, str]],
                       items: int, meter: CpuMeter) -> Run:
    from service.state.fsm import TERMINAL

    cpu = await meter.read()
    start = time.perf_counter()
    await asyncio.gather(*(client.execute(user, job_id) for user, job_id in jobs))
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            for _, job_id in jobs:
                pipe.hmget(keys.job(job_id).base, "state", "done")
            states = await pipe.execute()
        if all(state in TERMINAL for state, _ in states):
            break
        await asyncio.sleep(0.005)
    seconds = time.perf_counter() - start
    bad = [(job_id, s) for (_, job_id), s in zip(jobs, states, strict=True)
           if s != ["done", str(items)]]
    if bad:
        raise RuntimeError(f"jobs did not all end done with {items} items: {bad[:3]}")
    return Run(len(jobs), len(jobs) * items, seconds,
               CpuMeter.cores(cpu, await meter.read(), seconds))


async def worker_part(params: Params, stack: Any, redis: Any, rq_connection: Any
                      ) -> tuple[list[Row], Baseline, list[str]]:
    from bench.stack import HttpServer, Service, start_all
    from service.contract import make_queue
    from service.state.keys import KeySpace

    keys = KeySpace(stack.prefix, stack.settings().buckets)
    queue = make_queue(rq_connection, stack.prefix)
    api = HttpServer("tollgate-api", "tollgate", params.api_server, params.api_processes, stack)
    job_ids: list[str] = []
    rows: list[Row] = []
    baselines: dict[int, Run] = {}
    workers: list[Service] = []
    await asyncio.to_thread(start_all, [api])
    api_client = signing_client(api.url, stack.secret)
    try:
        total = params.jobs * params.repeats * len(params.workers)
        users = [f"e2e{i}" for i in range(math.ceil(total / JOBS_PER_USER))]
        await asyncio.gather(*(api_client.create_user(u, CREDITS) for u in users))
        owners = [users[i // JOBS_PER_USER] for i in range(total)]
        created = await asyncio.gather(*(api_client.uploaded_job(owner, [PAYLOAD] * params.items)
                                         for owner in owners))
        job_ids.extend(created)
        pairs = list(zip(owners, created, strict=True))
        for round_no, count in enumerate(params.workers):
            env = stack.env(public_url=api.url, TOLLGATE_PROCESSOR=PROCESSOR)
            command = [sys.executable, "-m", "service.cli.main", "worker", "--queue",
                       stack.prefix, *(["--fork"] if params.fork else [])]
            workers = [Service(f"worker-{i}", command, env).start() for i in range(count)]
            await wait_for_workers(queue, count)
            meter = CpuMeter(api, workers, redis)
            per_round = params.jobs * params.repeats
            mine = pairs[round_no * per_round:(round_no + 1) * per_round]
            # Baseline, tollgate, baseline, tollgate, ..., baseline: a slow spell on the
            # shared machine hits both; each tollgate leg's ratio is over the mean of the
            # baseline legs around it, the row's ratio the median over legs.
            bases: list[Run] = []
            runs: list[Run] = []
            for leg in range(params.repeats + 1):
                leg_jobs = mine[min(leg, params.repeats - 1) * params.jobs:][:params.jobs]
                payloads = await asyncio.to_thread(
                    baseline_payloads, stack, api.url, [job_id for _, job_id in leg_jobs],
                    params.items, (params.repeats + 1) * round_no + leg)
                bases.append(await rq_baseline(queue, stack.prefix,
                                               (params.repeats + 1) * round_no + leg,
                                               payloads, params.items, meter))
                if leg < params.repeats:
                    runs.append(await tollgate_run(api_client, redis, keys, leg_jobs,
                                                   params.items, meter))
            leg_ratios = [r.jobs_per_s / ((bases[i].jobs_per_s + bases[i + 1].jobs_per_s) / 2)
                          for i, r in enumerate(runs)]
            run = merged(runs)
            base = merged(bases)
            for worker in workers:
                await asyncio.to_thread(worker.stop, 15.0)
            workers = []
            baselines[count] = base
            noun = "worker" if count == 1 else "workers"
            print(f"  {count} {noun}: tollgate {run.jobs_per_s:.1f} jobs/s "
                  f"{run.items_per_s:.0f} items/s in {run.seconds:.2f}s, cores {run.cpu}; "
                  f"RQ transfers alone {base.jobs_per_s:.1f} jobs/s in {base.seconds:.2f}s, "
                  f"cores {base.cpu}", flush=True)
            rows.append(Row(
                f"tollgate, {count} {noun} ({params.items}-item jobs)", run.jobs_per_s,
                median(leg_ratios), TARGET, {
                    "leg_ratios": [round(x, 3) for x in leg_ratios],
                    "ratio_range": [round(min(leg_ratios), 3), round(max(leg_ratios), 3)],
                    "legs_jobs_per_s": [round(r.jobs_per_s, 2) for r in runs],
                    "jobs_per_s": round(run.jobs_per_s, 2),
                    "items_per_s": round(run.items_per_s, 1),
                    "jobs": run.jobs, "seconds": round(run.seconds, 3),
                    "rq_jobs_per_s": round(base.jobs_per_s, 2),
                    "rq_seconds": round(base.seconds, 3),
                    "rq_legs_jobs_per_s": [round(b.jobs_per_s, 2) for b in bases],
                    "rq_items_per_s": round(base.items_per_s, 1),
                    "cores": run.cpu, "rq_cores": base.cpu,
                }))
    finally:
        for worker in workers:
            worker.stop()
        await api_client.close()
        api.stop()
    first = baselines[params.workers[0]]
    noun = "worker" if params.workers[0] == 1 else "workers"
    baseline = Baseline(
        f"RQ alone: batches making the same storage transfers, same workers "
        f"(shown: {params.workers[0]} {noun})",
        first.jobs_per_s,
        {"jobs_per_s": round(first.jobs_per_s, 2),
         "rq_jobs_per_s_by_workers": {str(k): round(v.jobs_per_s, 2)
                                      for k, v in baselines.items()}})
    return rows, baseline, job_ids


# --- the flusher and memory part --------------------------------------------------------------

async def prefix_bytes(redis: Any, prefix: str) -> tuple[int, int]:
    """(sum of MEMORY USAGE over the prefix's keys, number of keys)."""
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=5000)]
    total = 0
    for start in range(0, len(keys), 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys[start:start + 2000]:
                pipe.memory_usage(key, samples=0)
            total += sum(size or 0 for size in await pipe.execute())
    return total, len(keys)


async def flusher_part(params: Params, stack: Any, redis: Any
                       ) -> tuple[Result | None, dict[str, Any]]:
    from sqlalchemy import text

    from bench.redis_side import ScriptRecorder, load_scripts_into, replay
    from service.contract import output_key
    from service.history.engine import make_engine, make_session_factory
    from service.history.queries import insert_ledger, upsert_jobs
    from service.runtime import make_core
    from service.state.keys import KeySpace
    from service.state.plans import PLANS
    from service.state.records import JobRecord, LedgerEntry
    from service.state.store import Core
    from service.sweeper import flush_once

    prefix = stack.prefix + "f"
    settings = stack.settings(key_prefix=prefix, flush_delay=0)
    keys = KeySpace(prefix, settings.buckets)
    core = make_core(redis, settings)  # as `tollgate flusher` builds it
    recorder = ScriptRecorder()
    scribe = Core(recorder, keys)
    await load_scripts_into(redis, list(core.scripts.values()))

    async def send() -> None:
        await replay(redis, recorder.take())

    count = params.flush_jobs
    users = [f"fl{i}" for i in range(math.ceil(count / JOBS_PER_USER))]
    for user in users:
        await scribe.ensure_user(user, PLANS["pro"], CREDITS)
    await send()
    # The signup grants sit in the bucket ledgers too: flush them first, off the clock, so
    # the measured ledger rows are the jobs' own charges.
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        while (await flush_once(core, sessions, settings)).ledger_entries:
            pass
        memory: dict[str, Any] = {}
        empty, _ = await prefix_bytes(redis, prefix)
        meta = '[' + ",".join(f'{{"name":"img-{i}.png","content_type":"image/png",'
                              f'"size":1024}}' for i in range(params.items)) + ']'
        owners = [users[i // JOBS_PER_USER] for i in range(count)]
        jobs = [(owner, keys.new_job_id(owner)) for owner in owners]

        async def stage(name: str) -> None:
            size, key_count = await prefix_bytes(redis, prefix)
            memory[name] = {"bytes_per_job": round((size - empty) / count),
                            "keys": key_count}

        for owner, job_id in jobs:
            await scribe.reserve(job_id=job_id, user_id=owner, total=params.items, price=1,
                                 hold_ttl_ms=86_400_000, meta_json=meta)
        await send()
        await stage("created (reserved, uploads pending)")
        for from_state, to_state in (("created", "uploaded"), ("uploaded", "queued")):
            for owner, job_id in jobs:
                await scribe.transition(job_id, from_state, to_state, owner=owner)
            await send()
        await stage("queued")
        for owner, job_id in jobs:
            await scribe.transition(job_id, "queued", "running", owner=owner,
                                    lease_ms=86_400_000)
        await send()
        half = params.items // 2

        async def report_items(indexes: range) -> None:
            for owner, job_id in jobs:
                for index in indexes:
                    await scribe.item_result(
                        job_id, owner, callback_key=f"{job_id}:item:{index}", index=index,
                        ok=True, detail=output_key(job_id, index), lease_ms=86_400_000,
                        flush_delay_ms=0)
            await send()

        await report_items(range(half))
        await stage(f"running, {half} of {params.items} items done")
        await report_items(range(half, params.items))
        await stage(f"finished ({params.items} of {params.items} done), not yet flushed")

        # Baseline: the same rows, built from the same records, one transaction per bucket.
        by_bucket: dict[int, list[str]] = {}
        for _, job_id in jobs:
            by_bucket.setdefault(keys.bucket_of_job(job_id) or 0, []).append(job_id)
        batches: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []

        for bucket, ids in by_bucket.items():
            async with redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    job = keys.job(job_id)
                    assert job is not None
                    pipe.hgetall(job.base)
                    pipe.hgetall(job.items)
                    pipe.get(job.meta)
                pipe.lrange(keys.bucket(bucket).ledger, 0, -1)
                replies = await pipe.execute()
            records = [JobRecord.from_redis(replies[i], replies[i + 1], replies[i + 2] or "")
                       for i in range(0, len(replies) - 1, 3)]
            batches.append(([record.history_row() for record in records if record],
                            [LedgerEntry.from_json(raw).history_row() for raw in replies[-1]]))
        sql_start = time.perf_counter()
        for rows, entries in batches:
            async with sessions() as session, session.begin():
                await upsert_jobs(session, rows)
                await insert_ledger(session, entries)
        sql_seconds = time.perf_counter() - sql_start
        sql_jobs = sum(len(rows) for rows, _ in batches)
        sql_ledger = sum(len(entries) for _, entries in batches)
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM jobs_log"))
            await conn.execute(text("DELETE FROM credit_ledger"))

        # Passes until one finds nothing; the clock stops after the last pass that wrote.
        flushed = ledger = passes = 0
        start = time.perf_counter()
        seconds = 0.0
        while True:
            stats = await flush_once(core, sessions, settings)
            if not stats.flushed_jobs and not stats.ledger_entries:
                break
            seconds = time.perf_counter() - start
            passes += 1
            flushed += stats.flushed_jobs
            ledger += stats.ledger_entries
        await stage("after the flush")
        async with engine.connect() as conn:
            in_sql = (await conn.execute(text("SELECT count(*) FROM jobs_log"))).scalar_one()
            ledger_rows = (await conn.execute(
                text("SELECT count(*) FROM credit_ledger"))).scalar_one()
        if flushed != count or in_sql != count or ledger_rows != ledger:
            raise RuntimeError(f"flushed {flushed} jobs ({in_sql} in SQL) of {count}; "
                               f"{ledger} ledger entries ({ledger_rows} in SQL)")
    finally:
        await engine.dispose()
    ratio = sql_seconds / seconds
    extra = {"jobs": flushed, "ledger_entries": ledger, "seconds": round(seconds, 3),
             "passes": passes, "buckets": settings.buckets, "flush_batch": settings.flush_batch}
    result = Result(
        name="flusher",
        title=(f"Flusher: rows/s into PostgreSQL from {count} finished {params.items}-item jobs "
               "on Redis, ratio to writing the same rows with SQL alone"),
        machine={}, params={"jobs": count, "items": params.items},
        baseline=Baseline("SQL alone: jobs_log rows, same rows and transactions",
                          sql_jobs / sql_seconds,
                          {"jobs": sql_jobs, "ledger_entries": sql_ledger,
                           "ledger_rows_per_s": round(sql_ledger / sql_seconds, 1),
                           "seconds": round(sql_seconds, 3)}),
        rows=[Row("flush_once: jobs_log rows", flushed / seconds, ratio, None, extra),
              Row("flush_once: credit_ledger rows", ledger / seconds, ratio, None, extra)],
    )
    return result, memory


# --- the run ---------------------------------------------------------------------------------

async def cleanup_rq(rq_connection: Any, prefix: str, job_ids: list[str]) -> None:
    """RQ's keys of this run: the queue's, the baseline jobs' (named after the prefix) and
    tollgate's batches (rq ids tg-<job id>-<n>)."""
    wanted = {prefix, *job_ids}

    def sweep() -> None:
        batch = []
        for key in rq_connection.scan_iter(match="rq:*", count=5000):
            text = key.decode() if isinstance(key, bytes) else key
            if prefix in text or any(job_id in text for job_id in wanted):
                batch.append(key)
        if batch:
            rq_connection.delete(*batch)
        rq_connection.srem("rq:queues", f"rq:queue:{prefix}")

    await asyncio.to_thread(sweep)


async def main_async(args: Any) -> list[tuple[Result, list[tuple[str, str]]]]:
    import redis as sync_redis
    from redis.asyncio import Redis

    from bench.redis_side import redis_facts
    from bench.stack import Database, Stack, delete_run_keys

    quick: bool = args.quick
    params = Params(
        workers=tuple(int(x) for x in (args.workers or ("1,2" if quick else "1,2,4")).split(",")),
        jobs=args.jobs or (4 if quick else 32),
        items=args.items,
        api_server=args.api_server,
        api_processes=args.api_processes,
        flush_jobs=args.flush_jobs or (200 if quick else 3000),
        fork=args.fork,
        repeats=args.repeats or (1 if quick else 3),
    )
    prefix = args.prefix or fresh_prefix()
    database = Database(args.postgres_dsn)
    stack = Stack(args.redis_url, database, prefix)
    redis = Redis.from_url(args.redis_url, decode_responses=True)
    rq_connection = sync_redis.Redis.from_url(args.redis_url)
    job_ids: list[str] = []
    try:
        facts = await redis_facts(redis)
        await asyncio.to_thread(database.create)
        print(f"database {database.name} (dropped at the end), key prefix {prefix}", flush=True)
        await asyncio.to_thread(stack.migrate)
        pg_version = await asyncio.to_thread(database.server_version)
        if not args.flusher_only:
            print("workers:", flush=True)
            rows, baseline, job_ids = await worker_part(params, stack, redis, rq_connection)
        print("flusher and memory:", flush=True)
        flusher, memory = await flusher_part(params, stack, redis)
    finally:
        await delete_run_keys(args.redis_url, prefix)
        await delete_run_keys(args.redis_url, prefix + "f")
        await cleanup_rq(rq_connection, prefix, job_ids)
        rq_connection.close()
        await redis.aclose()
        await asyncio.to_thread(database.drop)
        stack.remove_storage()

    machine = machine_info(**facts, postgres_server=pg_version)
    assert flusher is not None
    flusher.machine = machine
    flusher.quick = quick
    flusher.params["redis_memory_per_job"] = memory
    flusher_columns = [("jobs", "jobs"), ("ledger_entries", "ledger rows"), ("seconds", "s"),
                       ("passes", "passes")]
    if args.flusher_only:
        return [(flusher, flusher_columns)]
    workers_result = Result(
        name=NAME,
        title=(f"End to end: jobs/s with the no-op processor, {params.jobs} jobs of "
               f"{params.items} items, API on {params.api_server} x{params.api_processes}, "
               f"{'forking' if params.fork else 'in-process'} workers, batched reports; "
               "ratio to the same RQ workers making the same storage transfers alone"),
        machine=machine,
        params={**asdict(params), "processor": PROCESSOR,
                "redis_memory_per_job": memory},
        baseline=baseline, rows=rows, quick=quick,
    )
    return [
        (workers_result, [("jobs_per_s", "jobs/s"), ("items_per_s", "items/s"),
                          ("seconds", "s"),
                          ("rq_jobs_per_s", "RQ transfers alone, jobs/s"),
                          ("cores", "cores (API, workers, Redis)")]),
        (flusher, flusher_columns),
    ]


def memory_table(memory: dict[str, Any], items: int) -> str:
    lines = [f"## Redis memory per {items}-item job (sum of MEMORY USAGE over the run's keys)",
             "", "| state | bytes per job | keys of the prefix |", "|---|---:|---:|"]
    for state, value in memory.items():
        lines.append(f"| {state} | {value['bytes_per_job']:,} | {value['keys']:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = stack_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    parser.add_argument("--workers", default=None, help="default 1,2,4 (1,2 with --quick)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="jobs per leg; default 32 (4 with --quick)")
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--api-server", choices=["granian", "uvicorn"], default="granian")
    parser.add_argument("--api-processes", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=0,
                        help="tollgate legs per worker count, each between two baseline "
                             "legs; default 3 (1 with --quick)")
    parser.add_argument("--fork", action="store_true",
                        help="run the workers with --fork (a work-horse per batch)")
    parser.add_argument("--flusher-only", action="store_true",
                        help="only the flusher and memory part (no API, no workers)")
    parser.add_argument("--flush-jobs", type=int, default=0,
                        help="finished jobs to flush; default 3000 (200 with --quick)")
    args = parser.parse_args(argv)
    from bench.common import run

    started = time.monotonic()
    outputs = run(main_async(args))
    for result, columns in outputs:
        print()
        report(result, args.out, columns)
    print()
    print(memory_table(outputs[-1][0].params["redis_memory_per_job"], args.items))
    print(f"\n{time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
