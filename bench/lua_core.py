"""Lua core: reserve, item_result and settle calls per second through `Core`, each as a ratio
to a trivial one-key EVALSHA (lua/ping.lua) sent through the same Core/Script path, in the
same process and run.

    python bench/lua_core.py [--quick] [--tasks 32] [--connections 32] [--rounds 5]

How it drives Redis, and why: one process, `--tasks` asyncio tasks in a closed loop (a task
sends its next call when the previous one answered) over a pool of `--connections` sockets.
On a 2-core machine Redis takes one core and one Python client process the other; a second
client process only takes CPU from Redis and from the first client, so the total drops
(measured here: 1 process > 2 > 4). The client is built as the API builds it (redis-py's
plain pool); tasks do not outnumber connections, as more tasks than sockets only queue in
the client (redis-py's blocking pool even lets the tasks holding a socket re-take it at once
while the others starve for the whole phase).

A fourth row runs item_result through an auto-pipelined Core (service/autopipeline.py), as
the API sends the callback's script: the tasks' concurrent calls share pipelines.

The phases alternate, ping, reserve, ping, item_result, ping, settle, ping, ..., for `--rounds`
rounds; each ratio is the operation's rate over the mean of the two pings around it and the
reported ratio is the median over rounds, so a slow spell on a shared machine hits a
baseline and its operation alike.

Such a client is slower than Redis, so the calls/s ratio says what one API process gets.
Each row therefore also carries the client's CPU time per call (and `client_cpu_ratio`,
ping's over the row's: little moved by other programs on the machine) and Redis's own CPU
time per call from INFO cpu (and `server_cpu_ratio`): what the ratio becomes once enough API
processes saturate Redis.

State is created between phases, off the clock: pro-plan users with plenty of credits (10
jobs each, the plan's concurrency), queued jobs of `--items` items for item_result (1000 by
default, so the 512-entry callback dedup list is full, as in a big job) and for settle.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/lua_core.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Baseline,
    Result,
    Row,
    Timing,
    base_parser,
    closed_loop,
    event_loop_name,
    fresh_prefix,
    machine_info,
    median,
    report,
    run,
)
from bench.redis_side import (
    ScriptRecorder,
    ServerCounters,
    add_private_redis_option,
    connect,
    delete_prefix,
    load_scripts_into,
    redis_facts,
    replay,
)
from bench.stack import private_redis
from service.state.codes import Code
from service.state.keys import KeySpace
from service.state.plans import PLANS
from service.state.store import Core

NAME = "lua_core"
PLAN = PLANS["pro"]
CREDITS = 10**12
PRICE = 1
HOLD_MS = 86_400_000
LEASE_MS = 600_000
FLUSH_DELAY_MS = 86_400_000  # nothing flushes during the run; the keys are deleted after
TARGET = 0.5
OPERATIONS = ("reserve", "item_result", "settle", "item_result_piped")
# item_result_piped: the same call through an auto-pipelined Core, as the API sends the
# callback's script (service/autopipeline.py); no target, it shows what pipelining buys.
LABELS = {"item_result_piped": "item_result, auto-pipelined (as the API sends it)"}
TARGETS = {"reserve": TARGET, "item_result": TARGET, "settle": TARGET}


@dataclass(frozen=True, slots=True)
class Params:
    tasks: int
    connections: int
    rounds: int
    seconds: float
    items_per_job: int
    calibrate_seconds: float


@dataclass(slots=True)
class Workload:
    """Pre-created state, handed out by a running index that continues across rounds."""

    items_per_job: int
    reserve_jobs: list[tuple[str, str]] = field(default_factory=list)  # (user, job id)
    item_jobs: list[tuple[str, str]] = field(default_factory=list)  # (owner, job id), queued
    settle_jobs: list[tuple[str, str]] = field(default_factory=list)  # (owner, job id), queued
    piped_item_jobs: list[tuple[str, str]] = field(default_factory=list)  # as item_jobs
    used: dict[str, int] = field(default_factory=dict)

    def left(self, op: str) -> int:
        capacity = {
            "reserve": len(self.reserve_jobs),
            "item_result": len(self.item_jobs) * self.items_per_job,
            "settle": len(self.settle_jobs),
            "item_result_piped": len(self.piped_item_jobs) * self.items_per_job,
        }[op]
        return capacity - self.used.get(op, 0)


class Provisioner:
    """Creates state between phases, off the clock: builds the calls through Core against a
    recorder and replays them in pipelines (tens of thousands of jobs, call by call, would
    take longer than the benchmark). Users are pro-plan with plenty of credits, each holding
    at most the plan's 10 concurrent jobs, so every measured call succeeds."""

    def __init__(self, client: Any, keys: KeySpace, work: Workload) -> None:
        self.client = client
        self.keys = keys
        self.work = work
        self.recorder = ScriptRecorder()
        self.scribe = Core(self.recorder, keys)
        self.users = 0

    async def start(self) -> None:
        await load_scripts_into(self.client, list(self.scribe.scripts.values()))

    async def new_jobs(self, jobs: int) -> list[tuple[str, str]]:
        """`jobs` fresh (user, job id) pairs over newly provisioned users."""
        pairs: list[tuple[str, str]] = []
        for _ in range(math.ceil(jobs / PLAN.concurrency)):
            user = f"u{self.users}"
            self.users += 1
            await self.scribe.ensure_user(user, PLAN, CREDITS)
            pairs.extend((user, self.keys.new_job_id(user)) for _ in range(PLAN.concurrency))
        await replay(self.client, self.recorder.take())
        return pairs[:jobs]

    async def queued_jobs(self, jobs: int, total: int) -> list[tuple[str, str]]:
        pairs = await self.new_jobs(jobs)
        for owner, job_id in pairs:
            await self.scribe.reserve(job_id=job_id, user_id=owner, total=total, price=PRICE,
                                      hold_ttl_ms=HOLD_MS, meta_json="[]")
        await replay(self.client, self.recorder.take())
        for from_state, to_state in (("created", "uploaded"), ("uploaded", "queued")):
            for owner, job_id in pairs:
                await self.scribe.transition(job_id, from_state, to_state, owner=owner)
            await replay(self.client, self.recorder.take())
        return pairs

    async def top_up(self, op: str, calls: int) -> None:
        """Makes sure at least `calls` more calls of `op` find fresh state."""
        missing = calls - self.work.left(op)
        if missing <= 0:
            return
        if op == "reserve":
            self.work.reserve_jobs += await self.new_jobs(missing)
        elif op == "item_result":
            jobs = math.ceil(missing / self.work.items_per_job)
            self.work.item_jobs += await self.queued_jobs(jobs, self.work.items_per_job)
        elif op == "settle":
            self.work.settle_jobs += await self.queued_jobs(missing, 4)
        elif op == "item_result_piped":
            jobs = math.ceil(missing / self.work.items_per_job)
            self.work.piped_item_jobs += await self.queued_jobs(jobs, self.work.items_per_job)


def operation(core: Core, work: Workload, op: str) -> Any:
    """The measured call for `op`, given the running index; refusals stop the benchmark."""
    offset = work.used.get(op, 0)
    items_per_job = work.items_per_job

    async def ping(_: int) -> None:
        await core.ping()

    async def reserve(index: int) -> None:
        user, job_id = work.reserve_jobs[offset + index]
        code, _ = await core.reserve(job_id=job_id, user_id=user, total=1, price=PRICE,
                                     hold_ttl_ms=HOLD_MS, meta_json="[]")
        if code is not Code.OK:
            raise RuntimeError(f"reserve answered {code}")

    item_jobs = work.piped_item_jobs if op == "item_result_piped" else work.item_jobs

    async def item_result(index: int) -> None:
        position = offset + index
        owner, job_id = item_jobs[position // items_per_job]
        progress = await core.item_result(
            job_id, owner, callback_key=f"cb{position}", index=position % items_per_job,
            ok=True, detail=f"out/{position}", lease_ms=LEASE_MS, flush_delay_ms=FLUSH_DELAY_MS,
        )
        if progress.code is not Code.OK:
            raise RuntimeError(f"item_result answered {progress.code}")

    async def settle(index: int) -> None:
        owner, job_id = work.settle_jobs[offset + index]
        progress = await core.settle(job_id, owner, "failed", reason="bench",
                                     flush_delay_ms=FLUSH_DELAY_MS)
        if progress.code is not Code.OK:
            raise RuntimeError(f"settle answered {progress.code}")

    return {"ping": ping, "reserve": reserve, "item_result": item_result, "settle": settle,
            "item_result_piped": item_result}[op]


@dataclass(slots=True)
class Phase:
    timing: Timing
    server: dict[str, Any]
    exhausted: bool


async def measure(core: Core, client: Any, work: Workload, op: str, params: Params) -> Phase:
    limit = None if op == "ping" else work.left(op)
    before = await ServerCounters.read(client)
    timing = await closed_loop(operation(core, work, op),
                               tasks=params.tasks, seconds=params.seconds, limit=limit)
    after = await ServerCounters.read(client)
    work.used[op] = work.used.get(op, 0) + timing.calls
    exhausted = limit is not None and timing.calls >= limit
    return Phase(timing, after.since(before, timing.calls), exhausted)


def summarize(phases: list[Phase], around: list[tuple[Phase, Phase]]) -> dict[str, Any]:
    """`around[i]` are the baseline phases just before and just after `phases[i]`: the
    ratio of a round is the operation's rate over their mean, and the row's ratio is the
    median over the rounds."""

    def mean(pair: tuple[Phase, Phase], pick: Any) -> float:
        return (float(pick(pair[0])) + float(pick(pair[1]))) / 2

    ratios = [p.timing.ops_per_s / mean(b, lambda x: x.timing.ops_per_s)
              for p, b in zip(phases, around, strict=True)]
    client_bound = [mean(b, lambda x: x.timing.cpu_us_per_call) / p.timing.cpu_us_per_call
                    for p, b in zip(phases, around, strict=True) if p.timing.cpu_us_per_call]
    bound = [mean(b, lambda x: x.server["server_cpu_us_per_call"])
             / p.server["server_cpu_us_per_call"]
             for p, b in zip(phases, around, strict=True) if p.server["server_cpu_us_per_call"]]
    return {
        "ops_per_s": median([p.timing.ops_per_s for p in phases]),
        "ratio": median(ratios),
        "extra": {
            "calls": sum(p.timing.calls for p in phases),
            "round_ratios": [round(r, 3) for r in ratios],
            "p50_ms": round(median([p.timing.percentile_ms(0.5) for p in phases]), 3),
            "p99_ms": round(median([p.timing.percentile_ms(0.99) for p in phases]), 3),
            "client_cpu_us_per_call": round(median([p.timing.cpu_us_per_call for p in phases]), 1),
            "client_cpu_ratio": round(median(client_bound), 3) if client_bound else None,
            "script_us_per_call": median([p.server["script_us_per_call"] for p in phases]),
            "server_cpu_us_per_call": median([p.server["server_cpu_us_per_call"] for p in phases]),
            "server_cpu_ratio": round(median(bound), 3) if bound else None,
            "foreign_script_calls": sum(p.server["foreign_script_calls"] for p in phases),
            "ran_out_of_state": any(p.exhausted for p in phases),
        },
    }


async def main_async(args: Any) -> Result:
    quick: bool = args.quick
    params = Params(
        tasks=args.tasks,
        connections=args.connections,
        rounds=args.rounds or (1 if quick else 5),
        seconds=args.seconds or (0.25 if quick else 1.0),
        items_per_job=args.items or (50 if quick else 1000),
        calibrate_seconds=0.2 if quick else 1.0,
    )
    prefix = args.prefix or fresh_prefix()
    keys = KeySpace(prefix, 64)
    client = connect(args.redis_url, max(params.connections, params.tasks))
    core = Core(client, keys)
    piped = Core(client, keys, autopipeline=True)
    try:
        facts = await redis_facts(client)
        await core.ping()
        warm = await closed_loop(lambda _: core.ping(), tasks=params.tasks,
                                 seconds=params.calibrate_seconds)
        work = Workload(params.items_per_job)
        provisioner = Provisioner(client, keys, work)
        await provisioner.start()
        # State for each round: half as much again as the faster of the operation's and
        # ping's last rates (at first twice ping's warm-up rate: a warm-up on a busy machine
        # can be slow). A phase that still runs dry stops early, says so, and its rate
        # stays fair.
        expected = {op: 2 * warm.ops_per_s for op in OPERATIONS}
        # Every operation phase sits between two baseline phases: ping, reserve, ping,
        # item_result, ping, settle, ping; so each ratio compares calls seconds apart.
        pings: list[Phase] = []
        phases: dict[str, list[Phase]] = {op: [] for op in OPERATIONS}
        around: dict[str, list[tuple[Phase, Phase]]] = {op: [] for op in OPERATIONS}
        for _ in range(params.rounds):
            for op in OPERATIONS:
                await provisioner.top_up(op, math.ceil(expected[op] * params.seconds * 1.5))
            pings.append(await measure(core, client, work, "ping", params))
            for op in OPERATIONS:
                through = piped if op.endswith("_piped") else core
                phases[op].append(await measure(through, client, work, op, params))
                pings.append(await measure(core, client, work, "ping", params))
                around[op].append((pings[-2], pings[-1]))
                expected[op] = max(phases[op][-1].timing.ops_per_s, pings[-1].timing.ops_per_s)
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()

    rows = [Row(label=LABELS.get(op, op), target=TARGETS.get(op),
                **summarize(phases[op], around[op]))
            for op in OPERATIONS]
    baseline = summarize(pings, list(zip(pings, pings, strict=True)))
    del baseline["extra"]["round_ratios"]  # all 1 by definition
    return Result(
        name=NAME,
        title=(f"Lua core through Core: calls/s, {params.tasks} tasks over "
               f"{params.connections} connections, {params.rounds} rounds x {params.seconds} s"),
        machine=machine_info(**facts, event_loop=event_loop_name()),
        params={**asdict(params), "plan": PLAN.name, "users": provisioner.users},
        baseline=Baseline("ping (one-key EVALSHA)", baseline["ops_per_s"], baseline["extra"]),
        rows=rows,
        quick=quick,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=0, help="default 5 (1 with --quick)")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="per phase; default 1 (0.25 with --quick)")
    parser.add_argument("--items", type=int, default=0,
                        help="items per job for item_result; default 1000 (50 with --quick)")
    add_private_redis_option(parser)
    args = parser.parse_args(argv)
    if args.private_redis:
        with private_redis() as url:
            args.redis_url = url
            result = run(main_async(args))
    else:
        result = run(main_async(args))
    report(result, args.out, [
        ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
        ("client_cpu_us_per_call", "client CPU µs/call"), ("client_cpu_ratio", "client-CPU ratio"),
        ("server_cpu_us_per_call", "Redis CPU µs/call"),
        ("script_us_per_call", "script µs/call"),
        ("server_cpu_ratio", "Redis-CPU ratio"),
        ("foreign_script_calls", "foreign calls"),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
