"""Per item: API, Redis and worker CPU per item over the whole life of 8-item jobs (create,
uploads, confirm, execute, the worker's downloads, outputs and reports, the client's GET and
result downloads), and the items/s of one worker with the no-op processor; this checkout
against an earlier commit's (`--before`), on the local folder and on S3 (a moto server).

    git worktree add /tmp/tg-before 0cd71d2
    python bench/job_cost.py --before /tmp/tg-before [--quick] [--storage local,s3]
                             [--jobs 60] [--items 8] [--rounds 2]

Measured from outside, the same way for both checkouts, so the same script drives any
commit that has `tollgate api`, `tollgate worker` and `migrate` (`service.cli` before the
layout change, `service.cli.main` after): each checkout's own API (granian, one process)
and one worker of its own default mode (0cd71d2: a forked work-horse per batch; now: the
batch in the worker's process), started as a user starts them from that checkout, on a
redis-server of the run's own (its CPU counter then holds nothing but these calls), a fresh
PostgreSQL database and the storage under test. Only HTTP is used, as a client would.

For each storage, each round runs before, then after (alternating, so a slow spell on the
shared machine hits both), each on a stack of its own:
  warm-up  one job through its whole life, off the clock (imports, pools, first fork)
  submit   `--jobs` jobs: POST /jobs, 8 uploads to the presigned URLs, confirm-upload
           (8 jobs at a time); the worker is idle
  run      execute every job (8 at a time), until RQ counts every batch finished; the
           worker's items/s is the items over this phase's wall time
  results  GET /jobs/{id} of each (every item done) and each item's result_url downloaded
CPU: the API's processes (server and its children), the worker's (with the work-horses it
reaped: a forked worker's batches run there) from /proc, Redis from INFO cpu, over each
phase; per item = over `--jobs` x `--items`. The flusher does not run (it is not per item).
The row's ratio is the after's items/s over the before's; each CPU column carries the
before's figure over the after's in `*_ratio` (target 2: halved).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/job_cost.py`
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
from bench.stack import (
    ROOT,
    ApiClient,
    Database,
    HttpServer,
    Service,
    Stack,
    cli_module,
    process_cpu,
)

NAME = "job_cost"
PROCESSOR = "workers.processors.noop:passthrough"
CREDITS = 10**9
JOBS_PER_USER = 10  # the pro plan's concurrency
CONCURRENCY = 8  # jobs in flight at once on the client side
PAYLOAD = b"\x89PNG\r\n\x1a\n" + b"0" * 1016  # 1 KiB per input
PHASES = ("submit", "run", "results")
S3_KEYS = {"TOLLGATE_S3_ACCESS_KEY": "testing", "TOLLGATE_S3_SECRET_KEY": "testing",
           "TOLLGATE_S3_REGION": "us-east-1"}
# A checkout's own token signer, whichever module it lives in.
TOKENS_SCRIPT = """
import sys
try:
    from service.api.auth import issue_token
except ImportError:
    from service.auth import issue_token
secret = sys.argv[1]
print(issue_token(secret, "bench-admin", admin=True, ttl_s=7200))
for user in sys.argv[2:]:
    print(issue_token(secret, user, ttl_s=7200))
"""


@dataclass(frozen=True, slots=True)
class Params:
    before: str | None
    storages: tuple[str, ...]
    jobs: int
    items: int
    rounds: int


@dataclass(slots=True)
class Phase:
    seconds: float
    api_s: float
    redis_s: float
    worker_s: float


@dataclass(slots=True)
class Measure:
    """One checkout, one storage, one round."""

    tree: str
    storage: str
    jobs: int
    items: int
    phases: dict[str, Phase] = field(default_factory=dict)

    @property
    def total_items(self) -> int:
        return self.jobs * self.items

    def us_per_item(self, part: str, phases: tuple[str, ...] = PHASES) -> float:
        seconds = float(sum(getattr(self.phases[name], f"{part}_s") for name in phases))
        return seconds * 1e6 / self.total_items

    @property
    def items_per_s(self) -> float:
        return self.total_items / self.phases["run"].seconds

    def summary(self) -> dict[str, float]:
        return {
            "items_per_s": round(self.items_per_s, 1),
            "api_us_per_item": round(self.us_per_item("api"), 1),
            "api_submit_us_per_item": round(self.us_per_item("api", ("submit",)), 1),
            "api_run_us_per_item": round(self.us_per_item("api", ("run",)), 1),
            "api_results_us_per_item": round(self.us_per_item("api", ("results",)), 1),
            "redis_us_per_item": round(self.us_per_item("redis"), 1),
            "worker_us_per_item": round(self.us_per_item("worker"), 1),
        }


# --- S3 ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A real S3 API (moto in server mode) in a subprocess on a free port."""
    from bench.stack import free_port, wait_for_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "moto server", timeout=30, pause=0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=bucket)


# --- one checkout's stack ------------------------------------------------------------------------

class TreeStack:
    """One checkout's API and worker on a fresh database, queue and key prefix."""

    def __init__(self, tree: Path, storage: str, redis_url: str, admin_dsn: str,
                 s3_endpoint: str | None) -> None:
        self.tree = tree
        self.database = Database(admin_dsn)
        self.prefix = fresh_prefix()
        extra = {"PYTHONPATH": str(tree), "TOLLGATE_PROCESSOR": PROCESSOR}
        if storage == "s3":
            assert s3_endpoint is not None
            self.bucket = f"tgbench-{uuid.uuid4().hex[:10]}"
            extra.update(S3_KEYS, TOLLGATE_S3_ENDPOINT=s3_endpoint,
                         TOLLGATE_S3_BUCKET=self.bucket)
            create_bucket(s3_endpoint, self.bucket)
        self.stack = Stack(redis_url, self.database, self.prefix, extra=extra)
        self.api = HttpServer("api", "tollgate", "granian", 1, self.stack, tree=tree)
        self.worker: Service | None = None

    def start(self) -> None:
        self.database.create()
        print(f"database {self.database.name} (dropped at the end), key prefix {self.prefix}",
              flush=True)
        self.stack.migrate(self.tree)
        self.api.start()
        self.api.wait_ready()
        self.worker = Service("worker", [sys.executable, "-m", cli_module(self.tree), "worker",
                                         "--queue", self.prefix],
                              self.stack.env(public_url=self.api.url), cwd=self.tree).start()

    def tokens(self, users: list[str]) -> tuple[str, dict[str, str]]:
        out = subprocess.run([sys.executable, "-c", TOKENS_SCRIPT, self.stack.secret, *users],
                             env=self.stack.env(), cwd=self.tree, check=True,
                             capture_output=True, text=True, timeout=60).stdout.split()
        return out[0], dict(zip(users, out[1:], strict=True))

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop(15.0)
        self.api.stop()
        self.database.drop()
        self.stack.remove_storage()

    def cpu(self) -> tuple[float, float]:
        """(API processes, the worker with its reaped work-horses), CPU seconds."""
        assert self.worker is not None
        if not self.worker.alive():
            raise RuntimeError(f"the worker exited:\n{self.worker.output()[-3000:]}")
        return (sum(process_cpu(pid) for pid in self.api.pids()),
                process_cpu(self.worker.pid, reaped_children=True))


class Client(ApiClient):
    def __init__(self, url: str, admin: str, tokens: dict[str, str]) -> None:
        super().__init__(url, admin, tokens.__getitem__)
        self.tokens = tokens

    async def create_users(self) -> None:
        for user in self.tokens:
            await self.create_user(user, CREDITS)

    async def submit(self, user: str, items: int) -> str:
        return await self.uploaded_job(user, [PAYLOAD] * items)

    async def results(self, user: str, job_id: str, items: int) -> None:
        response = await self.http.get(f"/jobs/{job_id}", headers=self.auth(user))
        view = response.json()
        if response.status_code != 200 or view["status"] != "done":
            raise RuntimeError(f"GET /jobs/{job_id}: {response.status_code} {response.text}")
        urls = [item["result_url"] for item in view["items"] if item.get("result_url")]
        if len(urls) != items:
            raise RuntimeError(f"job {job_id}: {len(urls)} result URLs of {items}")
        for url in urls:
            got = await self.http.get(url)
            if got.status_code != 200 or got.content != PAYLOAD:
                raise RuntimeError(f"result download: {got.status_code}")


async def bounded(calls: list[Any]) -> list[Any]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(call: Any) -> Any:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))


async def batches_done(redis: Any, queue: str) -> int:
    """Batches RQ finished or failed on the queue (its registries)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(f"rq:finished:{queue}")
        pipe.zcard(f"rq:failed:{queue}")
        finished, failed = await pipe.execute()
    if failed:
        raise RuntimeError(f"{failed} batches failed on {queue}")
    return int(finished)


async def measure_tree(tree: Path, storage: str, params: Params, redis_url: str,
                       admin_dsn: str, s3_endpoint: str | None) -> Measure:
    from redis.asyncio import Redis

    users = [f"jc{i}" for i in range(-(-(params.jobs) // JOBS_PER_USER))]
    stack = TreeStack(tree, storage, redis_url, admin_dsn, s3_endpoint)
    redis = Redis.from_url(redis_url, decode_responses=True)
    client: Client | None = None
    result = Measure(str(tree), storage, params.jobs, params.items)
    try:
        await asyncio.to_thread(stack.start)
        admin, tokens = await asyncio.to_thread(stack.tokens, [*users, "jcwarm"])
        client = Client(stack.api.url, admin, tokens)
        await client.create_users()
        queue = stack.prefix
        # Warm-up: one job through its whole life, off the clock.
        warm = await client.submit("jcwarm", params.items)
        await client.execute("jcwarm", warm)
        deadline = time.monotonic() + 120
        while await batches_done(redis, queue) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the warm-up job never finished:\n"
                                   f"{stack.worker.output()[-3000:] if stack.worker else ''}")
            await asyncio.sleep(0.05)
        await client.results("jcwarm", warm, params.items)
        done_before = await batches_done(redis, queue)
        owners = [users[i // JOBS_PER_USER] for i in range(params.jobs)]
        job_ids: list[str] = []
        batches = params.jobs * -(-params.items // 8)

        async def phase(name: str, work: Any) -> None:
            api0, worker0 = stack.cpu()
            redis0 = await redis_cpu(redis)
            start = time.perf_counter()
            await work()
            seconds = time.perf_counter() - start
            api1, worker1 = stack.cpu()
            redis1 = await redis_cpu(redis)
            result.phases[name] = Phase(seconds, api1 - api0, redis1 - redis0,
                                        worker1 - worker0)

        async def submit() -> None:
            job_ids.extend(await bounded([client.submit(owner, params.items)
                                          for owner in owners]))

        async def run() -> None:
            await bounded([client.execute(owner, job_id)
                           for owner, job_id in zip(owners, job_ids, strict=True)])
            while await batches_done(redis, queue) < done_before + batches:  # noqa: ASYNC110
                await asyncio.sleep(0.005)

        async def results() -> None:
            await bounded([client.results(owner, job_id, params.items)
                           for owner, job_id in zip(owners, job_ids, strict=True)])

        assert client is not None
        await phase("submit", submit)
        await phase("run", run)
        await phase("results", results)
    finally:
        if client is not None:
            await client.close()
        await redis.aclose()
        await asyncio.to_thread(stack.stop)
    return result


async def redis_cpu(client: Any) -> float:
    info: dict[str, Any] = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# --- the run -------------------------------------------------------------------------------------

def label_of(tree: Path) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, check=True,
                                capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return f"{tree.name or tree} @ {commit}"


def result_for(storage: str, params: Params, measures: dict[str, list[Measure]],
               labels: dict[str, str], machine: dict[str, Any], quick: bool) -> Result:
    def combined(kind: str) -> dict[str, Any]:
        rounds = [m.summary() for m in measures[kind]]
        extra: dict[str, Any] = {key: round(median([r[key] for r in rounds]), 1)
                                 for key in rounds[0]}
        extra["rounds"] = rounds
        extra["items_per_s_range"] = [min(r["items_per_s"] for r in rounds),
                                      max(r["items_per_s"] for r in rounds)]
        return extra

    after = combined("after")
    rows = [Row(f"after: {labels['after']}, {storage}", after["items_per_s"], 1.0, 2.0, after)]
    base_label = f"this checkout, {storage} (no --before)"
    base_rate = after["items_per_s"]
    base_extra: dict[str, Any] = after
    if "before" in measures:
        before = combined("before")
        base_label = f"before: {labels['before']}, {storage}"
        base_rate = before["items_per_s"]
        base_extra = before
        pairs = list(zip(measures["before"], measures["after"], strict=True))
        rows[0].ratio = after["items_per_s"] / before["items_per_s"]
        after["round_ratios"] = [round(a.items_per_s / b.items_per_s, 3) for b, a in pairs]
        for part in ("api", "api_submit", "redis", "worker"):
            key = f"{part}_us_per_item"
            after[f"{part}_cpu_ratio"] = round(before[key] / after[key], 2) if after[key] else None
            after[f"{part}_cpu_round_ratios"] = [
                round(b.summary()[key] / a.summary()[key], 2) for b, a in pairs]
    return Result(
        name=f"{NAME}_{storage}",
        title=(f"Per item over the whole life of {params.items}-item jobs, {storage} storage, "
               "one API process, one no-op worker: one worker's items/s, ratio to the before "
               "checkout (target 2); API, Redis and worker CPU per item"),
        machine=machine,
        params={**asdict(params), "storage": storage, "processor": PROCESSOR,
                "labels": labels, "concurrency": CONCURRENCY},
        baseline=Baseline(base_label, base_rate, base_extra),
        rows=rows, quick=quick,
    )


async def main_async(args: Any) -> list[Result]:
    from redis.asyncio import Redis

    from bench.redis_side import redis_facts
    from bench.stack import private_redis

    quick: bool = args.quick
    params = Params(
        before=args.before,
        storages=tuple(args.storage.split(",")),
        jobs=args.jobs or (4 if quick else 60),
        items=args.items,
        rounds=args.rounds or (1 if quick else 2),
    )
    trees = {"after": ROOT}
    if params.before:
        trees = {"before": Path(params.before), "after": ROOT}
    labels = {kind: label_of(tree) for kind, tree in trees.items()}
    results: list[Result] = []
    with contextlib.ExitStack() as exits:
        redis_url = exits.enter_context(private_redis())
        s3 = exits.enter_context(moto_server()) if "s3" in params.storages else None
        client = Redis.from_url(redis_url, decode_responses=True)
        facts = await redis_facts(client)
        await client.aclose()
        machine = machine_info(**facts)
        for storage in params.storages:
            measures: dict[str, list[Measure]] = {kind: [] for kind in trees}
            for round_no in range(params.rounds):
                for kind, tree in trees.items():
                    measure = await measure_tree(tree, storage, params, redis_url,
                                                 args.postgres_dsn, s3)
                    measures[kind].append(measure)
                    s = measure.summary()
                    print(f"  {storage} round {round_no + 1} {kind} ({labels[kind]}): "
                          f"{s['items_per_s']:.0f} items/s; per item API "
                          f"{s['api_us_per_item']:.0f} µs (submit {s['api_submit_us_per_item']:.0f}"
                          f", run {s['api_run_us_per_item']:.0f}, results "
                          f"{s['api_results_us_per_item']:.0f}), Redis "
                          f"{s['redis_us_per_item']:.0f} µs, worker "
                          f"{s['worker_us_per_item']:.0f} µs", flush=True)
            results.append(result_for(storage, params, measures, labels, machine, quick))
    return results


COLUMNS = [("items_per_s_range", "items/s (rounds)"),
           ("api_us_per_item", "API µs/item"), ("api_cpu_ratio", "API ratio"),
           ("api_submit_us_per_item", "API submit µs/item"),
           ("redis_us_per_item", "Redis µs/item"), ("redis_cpu_ratio", "Redis ratio"),
           ("worker_us_per_item", "worker µs/item"), ("worker_cpu_ratio", "worker ratio")]


def main(argv: list[str] | None = None) -> int:
    parser = stack_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    parser.add_argument("--before", default=None,
                        help="a checkout of the earlier commit (git worktree add PATH 0cd71d2)")
    parser.add_argument("--storage", default="local,s3", help="local, s3 or both")
    parser.add_argument("--jobs", type=int, default=0, help="default 60 (4 with --quick)")
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=0, help="default 2 (1 with --quick)")
    args = parser.parse_args(argv)
    if args.before:
        args.before = str(Path(args.before).resolve())
    run_and_report(main_async(args), args.out, COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
