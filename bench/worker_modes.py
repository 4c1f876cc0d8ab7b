"""Worker modes: per-batch time of the example torch processor (EdgeMaps, on the CPU here)
run in the worker's own process (`tollgate worker`, the default: setup() once) against a
forked work-horse per batch (`tollgate worker --fork`: setup() per batch).

    python -m bench.worker_modes [--quick] [--items 96] [--rounds 2]

`tollgate api` on a private redis-server, and one `tollgate worker` with
TOLLGATE_PROCESSOR=workers.processors.torch_batch:EdgeMaps, started fresh for each
measurement. Each measurement: one job of `--items` distinct 256x256 PNGs (batches of 8),
uploaded and confirmed over HTTP once the worker registered; the clock starts at POST
/jobs/{id}/execute. The modes alternate, forked first. From RQ's records of the job's
batches: per batch, the median gap between consecutive batch ends (all a batch costs the
worker, a fork included); first batch, from execute to its end; wall, to the last. The ratio
is the forked median per batch over the in-process one. On a GPU the forked mode also pays
a CUDA start per batch.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from bench.harness import (
    Proc,
    Result,
    Row,
    Stack,
    median,
    parser,
    run,
    stack,
    tollgate,
    users,
)

PROCESSOR = "workers.processors.torch_batch:EdgeMaps"
MODES = {"forked": ["--fork"], "in-process": []}


def images(count: int) -> list[bytes]:
    """Distinct 256x256 RGB PNGs with edges to find (a gradient and a square per image)."""
    from PIL import Image, ImageDraw

    out = []
    for n in range(count):
        image = Image.linear_gradient("L").convert("RGB")
        offset = (n * 7) % 128
        ImageDraw.Draw(image).rectangle((32 + offset, 48, 120 + offset, 200), fill=(200, 40, 40))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def batch_records(bench: Stack, job_id: str) -> list[Any]:
    """RQ's finished records of the job's batches (RQ's JSON serializer, as tollgate's)."""
    import redis
    from rq import Queue
    from rq.job import Job
    from rq.registry import FinishedJobRegistry
    from rq.serializers import JSONSerializer

    with redis.Redis.from_url(bench.redis_url) as connection:
        queue = Queue(bench.queue, connection=connection, serializer=JSONSerializer)
        ids = FinishedJobRegistry(queue=queue).get_job_ids()
        jobs = Job.fetch_many(ids, connection=connection, serializer=JSONSerializer)
    return [j for j in jobs if j is not None and j.args and j.args[0].get("job_id") == job_id]


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def measure(bench: Stack, api: Proc, token: str, mode: str, pictures: list[bytes]
                  ) -> dict[str, float]:
    from rq import Worker

    auth = {"Authorization": f"Bearer {token}"}
    worker = bench.worker(api, PROCESSOR, *MODES[mode])
    try:
        import redis

        with redis.Redis.from_url(bench.redis_url) as connection:
            while not Worker.all(connection=connection):
                if not worker.alive():
                    raise RuntimeError(f"the worker exited:\n{worker.output()[-3000:]}")
                await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=api.url, timeout=120) as http:
            body = {"items": [{"name": f"img-{i}.png", "content_type": "image/png",
                               "size": len(data)} for i, data in enumerate(pictures)]}
            job = (await http.post("/jobs", json=body, headers=auth)).json()
            await asyncio.gather(*(http.request(u["method"], u["url"], headers=u["headers"],
                                                content=pictures[u["index"]])
                                   for u in job["uploads"]))
            await http.post(f"/jobs/{job['id']}/confirm-upload", headers=auth)
            cpu = worker.cpu(reaped_children=True)
            t0 = datetime.now(UTC)
            await http.post(f"/jobs/{job['id']}/execute", headers=auth)
            deadline = time.monotonic() + 600
            while (view := (await http.get(f"/jobs/{job['id']}", headers=auth)).json())[
                    "status"] in ("queued", "running"):
                if time.monotonic() > deadline or not worker.alive():
                    raise RuntimeError(f"the job never finished:\n{worker.output()[-3000:]}")
                await asyncio.sleep(0.02)
            if view["status"] != "done" or view["done_items"] != len(pictures):
                raise RuntimeError(f"job ended {view['status']} with {view['done_items']} done")
            cpu = worker.cpu(reaped_children=True) - cpu
    finally:
        worker.stop()
    records = await asyncio.to_thread(batch_records, bench, job["id"])
    ends = sorted(aware(r.ended_at) for r in records)
    spans = [(aware(r.ended_at) - aware(r.started_at)).total_seconds() for r in records]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ends)]
    return {"per_batch_s": round(median(gaps or spans), 4),
            "rq_per_batch_s": round(median(spans), 4),
            "first_batch_s": round((ends[0] - t0).total_seconds(), 3),
            "wall_s": round((ends[-1] - t0).total_seconds(), 3),
            "worker_cpu_s": round(cpu, 2), "batches": len(records)}


async def main(args: Any) -> list[Result]:
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    pictures = images(args.items)
    with stack() as bench:
        api = bench.api()
        # Executed jobs wait in tollgate's order; a dispatcher feeds RQ for the live worker.
        bench.start("tollgate dispatcher", tollgate("dispatcher"))
        bench.dispatching = True
        (token,) = await users(bench, api, ["wm"])
        for _ in range(args.rounds):
            for mode in MODES:
                runs[mode].append(await measure(bench, api, token, mode, pictures))
                print(f"  {mode}: {runs[mode][-1]}", flush=True)

    def summary(mode: str) -> dict[str, float]:
        return {key: median([r[key] for r in runs[mode]]) for key in runs[mode][0]}

    forked, inproc = summary("forked"), summary("in-process")
    return [Result(
        "worker_modes", f"Worker modes: the CPU torch processor (EdgeMaps), {args.items} items "
        "in batches of 8; batches/s from the median time per batch", "batches/s",
        Row("forked work-horse per batch (tollgate worker --fork)",
            round(1 / forked["per_batch_s"], 2), 1.0, None, forked),
        [Row("in-process, setup() once (tollgate worker, the default)",
             round(1 / inproc["per_batch_s"], 2),
             round(forked["per_batch_s"] / inproc["per_batch_s"], 3), None, inproc)],
        {"items": args.items, "rounds": args.rounds, "processor": PROCESSOR}, args.quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--items", type=int, default=96)
    cli.add_argument("--rounds", type=int, default=2)
    args = cli.parse_args()
    if args.quick:
        args.items, args.rounds = 16, 1
    run(main(args), args)
