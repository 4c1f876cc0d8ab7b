"""Dispatch cost (issue 21): the Redis work of handing a job's batches to RQ through
tollgate's dispatch order, against the direct enqueue it replaced, on one private
redis-server, with no HTTP and no worker: the dispatcher's own share of "Redis CPU per item",
apart from everything else a job costs (which bench/end_to_end measures whole).

    python -m bench.dispatch_cost [--quick] [--jobs 400] [--items 8] [--repeats 3]

Each leg readies `--jobs` uploaded jobs of `--items` items (one batch each at the default
batch size of 8), of users of their own, then hands them to RQ, timed with the
redis-server's CPU (INFO used_cpu_user + used_cpu_sys), its commands, and this process's CPU
(which plays the API and the dispatcher):
  baseline   the path before issue 21, as POST /jobs/{id}/execute made it: the job read with
             its items, the `uploaded -> queued` transition script, the RQ enqueue of its
             batches;
  dispatch   POST /jobs/{id}/execute's admit (its bucket script and the order's write), then
             dispatcher passes until every batch is in RQ (for each job: the order's head,
             the claim, the job read, the RQ enqueue, the confirm, its new place).
Legs alternate, baseline first and last; a row is the median over its legs, its ratio the
baseline's Redis CPU per batch over the dispatch's (so 1.0 is no dearer).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

from bench.harness import CREDITS, JOBS_PER_USER, Result, Row, median, parser, run, stack

SECRET = "bench-secret-" + "x" * 32


async def ready_jobs(rt: Any, leg: str, jobs: int, items: int) -> list[Any]:
    """`jobs` uploaded jobs (their inputs are not needed to hand them), of pro users."""
    from service.jobs.provisioning import as_known_user, provision_user

    model = rt.models.get(None)
    meta = json.dumps([{"name": f"i{i}.png", "content_type": "image/png", "size": 10}
                       for i in range(items)])
    made = []
    for n in range(jobs):
        user = f"dc-{leg}-{n // JOBS_PER_USER}"
        if n % JOBS_PER_USER == 0:
            assert await provision_user(rt, user, plan="pro", credits=CREDITS)
        job_id = rt.core.keys.new_job_id(user)
        await as_known_user(rt, user, functools.partial(
            rt.core.reserve, job_id=job_id, user_id=user, total=items,
            price=model.price_per_item, model=model.name, hold_ttl_ms=3_600_000,
            meta_json=meta, uploaded=True))
        job = await rt.core.job(job_id)
        assert job is not None
        made.append(job)
    return made


async def direct(rt: Any, jobs: list[Any]) -> int:
    """Before issue 21: execute moved the job to queued and enqueued its batches at once."""
    from service.jobs.dispatch import enqueue_batches
    from service.state.fsm import JobState

    batches = 0
    for job in jobs:
        full = await rt.core.job_snapshot(job.id)
        await rt.core.transition(job.id, JobState.UPLOADED, JobState.QUEUED, owner=job.user_id)
        size = rt.models.get(job.model).batch_size
        count = -(-job.total_items // size)
        batches += len(await enqueue_batches(rt, full, range(count), new_only=True))
    return batches


async def dispatched(rt: Any, jobs: list[Any]) -> int:
    """Since issue 21: execute admits the job to its queue's order; the dispatcher hands it."""
    from service.flusher.dispatcher import Dispatcher
    from service.jobs.dispatch import admit

    for job in jobs:
        assert await admit(rt, job) is not None
    dispatcher = Dispatcher(rt, fixed_room=len(jobs) * 64)
    handed = 0
    while (step := await dispatcher.pass_once()) > 0:
        handed += step
    await dispatcher.release()
    return handed


async def main(args: Any) -> list[Result]:
    from service.runtime import open_runtime
    from service.settings import Settings

    legs: dict[str, list[dict[str, float]]] = {"baseline": [], "dispatch": []}
    with stack(args.postgres_dsn) as bench:
        settings = Settings(**{**{k.removeprefix("TOLLGATE_").lower(): v
                                  for k, v in bench.env().items() if k.startswith("TOLLGATE_")},
                               "jwt_secret": SECRET})
        rt = await open_runtime(settings, SECRET)
        try:
            order = ["baseline", "dispatch"] * args.repeats + ["baseline"]
            for n, kind in enumerate(order):
                jobs = await ready_jobs(rt, f"{kind}{n}", args.jobs, args.items)
                calls, cpu = bench.redis_stats()
                began = time.process_time()
                batches = await (direct if kind == "baseline" else dispatched)(rt, jobs)
                spent = time.process_time() - began
                calls_after, cpu_after = bench.redis_stats()
                assert batches == len(jobs) * -(-args.items // 8), (kind, batches)
                legs[kind].append({"redis_us": (cpu_after - cpu) / batches * 1e6,
                                   "calls": (calls_after - calls - 2) / batches,
                                   "python_us": spent / batches * 1e6})
                rt.queue_connection.delete(f"rq:queue:{settings.queue_name}")
        finally:
            await rt.close()

    def row_of(kind: str) -> dict[str, float]:
        return {name: round(median([leg[name] for leg in legs[kind]]), 1)
                for name in legs[kind][0]}

    base, after = row_of("baseline"), row_of("dispatch")
    per_item = args.items
    return [Result(
        "dispatch_cost", f"Dispatch cost: Redis CPU per batch handed to RQ ({args.items}-item "
        f"jobs, {args.jobs} a leg), tollgate's dispatch order against the direct enqueue "
        "before issue 21 (ratio: before over after)", "µs Redis CPU per batch",
        Row("direct enqueue at execute (before issue 21)", base["redis_us"], 1.0,
            None, {"commands_per_batch": base["calls"],
                   "caller_cpu_us_per_batch": base["python_us"],
                   "redis_us_per_item": round(base["redis_us"] / per_item, 1),
                   "legs_redis_us": [round(leg["redis_us"]) for leg in legs["baseline"]]}),
        [Row("admit + dispatcher hand", after["redis_us"],
             round(base["redis_us"] / after["redis_us"], 3), None,
             {"commands_per_batch": after["calls"],
              "caller_cpu_us_per_batch": after["python_us"],
              "redis_us_per_item": round(after["redis_us"] / per_item, 1),
              "added_redis_us_per_item": round((after["redis_us"] - base["redis_us"])
                                               / per_item, 1),
              "legs_redis_us": [round(leg["redis_us"]) for leg in legs["dispatch"]]})],
        {"jobs": args.jobs, "items": args.items, "repeats": args.repeats,
         "loadavg_before": args.load}, args.quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--jobs", type=int, default=0, help="jobs a leg (default 400; 20 quick)")
    cli.add_argument("--items", type=int, default=8)
    cli.add_argument("--repeats", type=int, default=0, help="dispatch legs (default 3; 1)")
    args = cli.parse_args()
    args.jobs = args.jobs or (20 if args.quick else 400)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.load = [round(v, 2) for v in os.getloadavg()]
    run(main(args), args)
