"""Worker modes: per-batch latency of the example torch processor (EdgeMaps, on the CPU here)
with the batch run in the worker's own process (`tollgate worker`, the default: setup()
once) against a forked work-horse per batch (`tollgate worker --fork`: setup() per batch).

    python bench/worker_modes.py [--quick] [--items 96] [--rounds 2]

What runs: a redis-server of the run's own, a fresh PostgreSQL database, local-folder
storage, the API (`python -m service.cli.main api`, granian, one process) and one
`python -m service.cli.main worker` with TOLLGATE_PROCESSOR=workers.processors.torch_batch:
EdgeMaps, started fresh for each measurement as a user starts it. Each measurement: one job
of `--items` distinct 256x256 PNGs (batches of 8), created, uploaded and confirmed off the
clock once the worker has registered; the clock starts at POST /jobs/{id}/execute. The modes
alternate, forked first, `--rounds` times. From RQ's records of the job's batches (one
worker runs them one after another):
  per batch     the median time between one batch's end and the next's: everything a batch
                costs the worker (a fork, the horse's torch import and setup() when forked;
                downloads, the forward pass, uploads, the report)
  first batch   from the execute request to the end of the first batch
  wall          from the execute request to the end of the last batch
also RQ's own started -> ended median per batch (in a forked horse it leaves out the fork)
and the worker's CPU seconds for the job (with its reaped work-horses). The ratio is the
forked median per batch over the in-process one. On a GPU the forked mode also pays a CUDA
start per batch (issue 11, on one H200: 0.333 s against 0.041 s per batch).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/worker_modes.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Baseline,
    Result,
    Row,
    fresh_prefix,
    machine_info,
    median,
    run_and_report,
    stack_parser,
)
from bench.stack import ApiClient, Database, HttpServer, Service, Stack, process_cpu

NAME = "worker_modes"
PROCESSOR = "workers.processors.torch_batch:EdgeMaps"
MODES = {"forked": ["--fork"], "in-process": []}
BATCH = 8


@dataclass(frozen=True, slots=True)
class Params:
    items: int
    rounds: int


@dataclass(slots=True)
class Measure:
    mode: str
    startup_s: float
    per_batch_s: float
    rq_per_batch_s: float
    first_batch_s: float
    wall_s: float
    worker_cpu_s: float
    batches: int


def images(count: int) -> list[bytes]:
    """Distinct 256x256 RGB PNGs with edges to find (a gradient and a square per image)."""
    from PIL import Image, ImageDraw

    out = []
    for n in range(count):
        image = Image.linear_gradient("L").convert("RGB")
        draw = ImageDraw.Draw(image)
        offset = (n * 7) % 128
        draw.rectangle((32 + offset, 48, 120 + offset, 200), fill=(200, 40, 40))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Harness(ApiClient):
    def __init__(self, stack: Stack, api: HttpServer, redis_url: str) -> None:
        import redis as sync_redis

        from service.api.auth import issue_token

        token = issue_token(stack.secret, "wm", ttl_s=7200)
        super().__init__(api.url, issue_token(stack.secret, "wm-admin", admin=True),
                         lambda user: token, timeout=120, uploads_at_once=8)
        self.stack, self.api = stack, api
        self.rq = sync_redis.Redis.from_url(redis_url)

    def registered(self, queue: str) -> int:
        from rq import Worker

        from service.contract import make_queue

        return len(Worker.all(queue=make_queue(self.rq, queue)))

    async def measure(self, mode: str, pictures: list[bytes]) -> Measure:
        from rq.job import Job

        from service.contract import SERIALIZER, rq_job_id

        env = self.stack.env(public_url=self.api.url, TOLLGATE_PROCESSOR=PROCESSOR)
        started = time.perf_counter()
        worker = Service(f"worker-{mode}", [sys.executable, "-m", "service.cli.main", "worker",
                                            "--queue", self.stack.prefix, *MODES[mode]],
                         env).start()
        try:
            while await asyncio.to_thread(self.registered, self.stack.prefix) < 1:
                if not worker.alive() or time.perf_counter() - started > 120:
                    raise RuntimeError(f"the worker never registered:\n{worker.output()[-3000:]}")
                await asyncio.sleep(0.05)
            startup = time.perf_counter() - started
            job_id = await self.uploaded_job("wm", pictures)
            batches = -(-len(pictures) // BATCH)
            ids = [rq_job_id(job_id, n) for n in range(batches)]
            cpu_before = process_cpu(worker.pid, reaped_children=True)
            t0 = datetime.now(UTC)
            await self.execute("wm", job_id)
            deadline = time.monotonic() + 600
            while True:
                jobs = await asyncio.to_thread(Job.fetch_many, ids, connection=self.rq,
                                               serializer=SERIALIZER)
                if all(j is not None and j.ended_at is not None for j in jobs):
                    break
                if any(j is not None and j.is_failed for j in jobs):
                    raise RuntimeError(f"a batch failed:\n{worker.output()[-3000:]}")
                if time.monotonic() > deadline or not worker.alive():
                    raise RuntimeError(f"the job never finished:\n{worker.output()[-3000:]}")
                await asyncio.sleep(0.02)
            cpu = process_cpu(worker.pid, reaped_children=True) - cpu_before
            view = (await self.http.get(f"/jobs/{job_id}", headers=self.auth("wm"))).json()
            if view["status"] != "done" or view["done_items"] != len(pictures):
                raise RuntimeError(f"job ended {view['status']} with {view['done_items']} done")
        finally:
            await asyncio.to_thread(worker.stop, 15.0)
        ends = sorted(aware(j.ended_at) for j in jobs if j is not None and j.ended_at)
        spans = [(aware(j.ended_at) - aware(j.started_at)).total_seconds()
                 for j in jobs if j is not None and j.ended_at and j.started_at]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ends)]
        return Measure(mode, round(startup, 3), round(median(gaps or spans), 4),
                       round(median(spans), 4), round((ends[0] - t0).total_seconds(), 3),
                       round((ends[-1] - t0).total_seconds(), 3), round(cpu, 2), batches)

    async def close(self) -> None:
        await super().close()
        self.rq.close()


async def main_async(args: Any) -> Result:
    from redis.asyncio import Redis

    from bench.redis_side import redis_facts
    from bench.stack import private_redis, start_all

    params = Params(items=args.items or (16 if args.quick else 96),
                    rounds=args.rounds or (1 if args.quick else 2))
    measures: dict[str, list[Measure]] = {mode: [] for mode in MODES}
    with private_redis() as redis_url:
        database = Database(args.postgres_dsn)
        stack = Stack(redis_url, database, fresh_prefix())
        client = Redis.from_url(redis_url, decode_responses=True)
        facts = await redis_facts(client)
        await client.aclose()
        api = HttpServer("tollgate-api", "tollgate", "granian", 1, stack)
        harness: Harness | None = None
        try:
            await asyncio.to_thread(database.create)
            print(f"database {database.name} (dropped at the end)", flush=True)
            await asyncio.to_thread(stack.migrate)
            await asyncio.to_thread(start_all, [api])
            harness = Harness(stack, api, redis_url)
            await harness.create_user("wm", 10**6)
            pictures = images(params.items)
            for round_no in range(params.rounds):
                for mode in MODES:
                    m = await harness.measure(mode, pictures)
                    measures[mode].append(m)
                    print(f"  round {round_no + 1} {mode}: per batch {m.per_batch_s:.3f} s "
                          f"(RQ started->ended {m.rq_per_batch_s:.3f} s), first batch "
                          f"{m.first_batch_s:.2f} s, {params.items} items in {m.wall_s:.2f} s, "
                          f"worker CPU {m.worker_cpu_s:.1f} s, start-up {m.startup_s:.1f} s",
                          flush=True)
        finally:
            if harness is not None:
                await harness.close()
            api.stop()
            await asyncio.to_thread(database.drop)
            stack.remove_storage()

    def extra(mode: str) -> dict[str, Any]:
        runs = measures[mode]
        out: dict[str, Any] = {key: round(median([getattr(m, key) for m in runs]), 4)
                               for key in ("per_batch_s", "rq_per_batch_s", "first_batch_s",
                                           "wall_s", "worker_cpu_s", "startup_s")}
        out["rounds"] = [asdict(m) for m in runs]
        out["per_batch_s_range"] = [min(m.per_batch_s for m in runs),
                                    max(m.per_batch_s for m in runs)]
        out["wall_s_range"] = [min(m.wall_s for m in runs), max(m.wall_s for m in runs)]
        return out

    forked, inproc = extra("forked"), extra("in-process")
    inproc["round_ratios"] = [round(f.per_batch_s / i.per_batch_s, 2) for f, i in
                              zip(measures["forked"], measures["in-process"], strict=True)]
    return Result(
        name=NAME,
        title=(f"Worker modes: the CPU torch processor (EdgeMaps), {params.items} items in "
               f"batches of {BATCH}, one worker; batches/s from the median time per batch, "
               "ratio to a forked work-horse per batch"),
        machine=machine_info(**facts), params={**asdict(params), "processor": PROCESSOR},
        baseline=Baseline("forked work-horse per batch (tollgate worker --fork)",
                          1 / forked["per_batch_s"], forked),
        rows=[Row("in-process, setup() once (tollgate worker, the default)",
                  1 / inproc["per_batch_s"], forked["per_batch_s"] / inproc["per_batch_s"],
                  None, inproc)],
        quick=args.quick,
    )


COLUMNS = [("per_batch_s", "median per batch, s"), ("per_batch_s_range", "range"),
           ("rq_per_batch_s", "RQ started->ended, s"), ("first_batch_s", "first batch, s"),
           ("wall_s", "wall, s"), ("wall_s_range", "wall range"),
           ("worker_cpu_s", "worker CPU, s"), ("startup_s", "worker start-up, s")]


def main(argv: list[str] | None = None) -> int:
    parser = stack_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    parser.add_argument("--items", type=int, default=0, help="default 96 (16 with --quick)")
    parser.add_argument("--rounds", type=int, default=0, help="default 2 (1 with --quick)")
    args = parser.parse_args(argv)
    run_and_report(main_async(args), args.out, COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
