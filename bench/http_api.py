"""HTTP: requests/s of POST /jobs (1 and 8 items), POST /jobs/{id}/callback (one item, and a
batched report of 8) and GET /jobs/{id}, each as a ratio to a bare Litestar endpoint
(bench/bare_app.py) served by the same server and process count in the same run; uvicorn
and granian side by side.

    python bench/http_api.py [--quick] [--servers granian,uvicorn] [--processes 1,2]
                             [--connections 64] [--seconds 2] [--rounds 2]

What runs: for each process count, four real server subprocesses at once: `python -m
service.cli.main api --server S --workers N` (tollgate, on real Redis, a fresh PostgreSQL
database, local-folder storage, its own key prefix and secret) and `bench/bare_app.py
--server S --workers N`, for S in uvicorn and granian. Only one of them is under load at a
time. The load generator is `wrk` (C, keep-alive, one thread, `--connections` connections),
driven by a Lua script that sends a pre-built list of requests, checks every status code
(and a marker in the body), and stops when the list is used up; its own clock runs from the
first request to the last counted answer.

How the 2 CPUs are shared: wrk, Redis and the N server processes all run on the same
machine; wrk takes a small share (its CPU time is in each row), the server processes the
rest. So ops/s is what the server gets beside Redis and a C client; each row also carries
the server processes' CPU time per request, and `server_cpu_ratio` (bare's CPU per request
over the row's): the ratio once the API processes, not the cores, are what runs out.

What each phase measures (every request must answer as expected, or the run fails):
  bare            GET /bare -> 200 (a small dict, no auth, no I/O)
  bare POST       POST /bare -> 200: the same, with a callback-sized JSON body read and
                  validated; once per round, as a second reference for the POST rows
                  (their "ratio to bare POST" column), not as the baseline
  POST /jobs      201 from a distinct pro user with plenty of credits on each consecutive
                  request; users are created through POST /admin/users, each takes at most
                  its 10 concurrent jobs per phase, and between phases the benchmark cancels
                  their jobs (off the clock) so the next phase finds free slots: the create
                  path, never a refusal. The users exist (SQL row and Redis record) before
                  the clock starts, so no request provisions one; a pass of GET /me per
                  user warms every server process's connections first.
  callback        200 with "duplicate": false: item events with distinct idempotency keys
                  on queued jobs of `--callback-items` items (created through Core, off the
                  clock), consecutive requests on different jobs, as many workers would.
  batch           200 with "counted":8: one batched report (`event: "items"`) of all 8 items
                  of a fresh queued 8-item job per request, with the worker's own
                  idempotency keys; consecutive requests on different jobs.
  bare POST, same body
                  POST /bare/any -> 200 (bench/bare_app.py: any JSON object decoded and
                  dropped) with the very body of POST /jobs (1 item) and of the batched
                  report; once per round each. Issue 11's targets stand against these:
                  POST /jobs (1 item) >= 0.5, the batched report >= 0.4 (the columns
                  "ratio to bare POST, same body" and "target (same body)").
  GET /jobs/{id}  200: a running 8-item job with 4 items done (4 result URLs signed), the
                  owner's token; a few hundred such jobs in turn.

Phases alternate per server: bare, op, bare, op, ...; an op's ratio is its rate over the
mean of the bare phases just before and after it (the median over `--rounds`).
Writes bench/results/http_api_<server>_<N>p.json per server and process count, and
bench/results/http_servers.json (granian over uvicorn, per endpoint and process count).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/http_api.py`
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
from bench.common import stop_on_sigterm as stop_on_sigterm  # bench/http_profile.py's
from bench.stack import Database, HttpServer, Stack, delete_run_keys

NAME = "http_api"
CREDITS = 10**9  # fits credit_ledger.amount (a 32-bit INTEGER column)
JOBS_PER_USER = 10  # the pro plan's concurrency
# Issue 11's targets, restated against a bare POST of the very same body (POST /bare/any of
# bench/bare_app.py), same server and process count: the earlier ones, against GET /bare,
# no POST could reach on granian. The ratio column stays against GET /bare.
SAME_BODY_TARGETS = {"post1": 0.5, "batch": 0.4}
LABELS = {
    "post1": "POST /jobs (1 item)",
    "post8": "POST /jobs (8 items)",
    "callback": "POST /jobs/{id}/callback (item)",
    "batch": "POST /jobs/{id}/callback (batched report, 8 items)",
    "get": "GET /jobs/{id} (8 items)",
}
OPERATIONS = tuple(LABELS)
POST_OPERATIONS = ("post1", "post8", "callback", "batch")
SAME_BODY_LABELS = {
    "post1": "POST /bare/any, the POST /jobs (1 item) body (reference)",
    "batch": "POST /bare/any, the 8-item report body (reference)",
}
# A second reference, beside the baseline: the bare app's POST /bare reads and validates a
# small JSON body, which every POST endpoint pays for and GET /bare does not.
BARE_POST_LABEL = "POST /bare (bare Litestar, small JSON body; reference)"
BARE_POST_BODY = json.dumps({"idempotency_key": "bench:0:1", "event": "item", "item_index": 1,
                             "ok": True}, separators=(",", ":"))

# The load script. wrk runs it in one Lua state per thread (request/response) and one for
# setup/done. A list of requests is split among the threads; "once" sends each request
# once, then a cheap filler (a path that answers 404) until the thread's last real answer
# is in, then stops the thread and says so on stderr (wrk itself would sleep out its -d);
# "cycle" goes round the list until -d ends. Time is CLOCK_MONOTONIC through LuaJIT's FFI.
WRK_SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } tg_timespec;
int clock_gettime(int clk_id, tg_timespec *tp);
]]
local ts = ffi.new("tg_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local queue, filler, mode, expected, marker
local stopped, verifying = false, false
issued, real, fillers, filler_answers, unexpected, unmarked = 0, 0, 0, 0, 0, 0
first, last = 0, 0
codes = {}

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  mode, expected, marker = args[3], tonumber(args[4]), args[5]
  if marker == "-" then marker = nil end
  queue = {}
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == tid then
      local method, target, token, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = {}
      if token ~= "-" then headers["Authorization"] = "Bearer " .. token end
      if body == "-" then body = nil else headers["Content-Type"] = "application/json" end
      queue[#queue + 1] = wrk.format(method, target, headers, body)
    end
    i = i + 1
  end
  filler = wrk.format("GET", "/bench-filler-not-found")
  -- wrk calls request() once on thread 0's state right after init() to check the request;
  -- that call sends nothing, so it must not use up a request.
  verifying = tid == 0
end

function request()
  if verifying then
    verifying = false
    return queue[1] or filler
  end
  if first == 0 then first = now() end
  if issued < #queue then
    issued = issued + 1
    return queue[issued]
  end
  if mode == "cycle" then
    issued = issued + 1
    return queue[(issued - 1) % #queue + 1]
  end
  fillers = fillers + 1
  return filler
end

function response(status, headers, body)
  if mode == "once" and fillers > 0 and status == 404 then
    filler_answers = filler_answers + 1
    return
  end
  real = real + 1
  last = now()
  codes[status] = (codes[status] or 0) + 1
  if status ~= expected then
    unexpected = unexpected + 1
  elseif marker and not string.find(body, marker, 1, true) then
    unmarked = unmarked + 1
  end
  if mode == "once" and real >= #queue and not stopped then
    stopped = true
    io.stderr:write("BENCH_THREAD_DONE\n")
    io.stderr:flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local parts = {}
  for _, t in ipairs(threads) do
    local c = {}
    for k, v in pairs(t:get("codes")) do c[#c + 1] = string.format('"%d": %d', k, v) end
    parts[#parts + 1] = string.format(
      '{"issued": %d, "real": %d, "fillers": %d, "filler_answers": %d, "unexpected": %d, '
      .. '"unmarked": %d, "first": %.6f, "last": %.6f, "codes": {%s}}',
      t:get("issued"), t:get("real"), t:get("fillers"), t:get("filler_answers"),
      t:get("unexpected"), t:get("unmarked"), t:get("first"), t:get("last"),
      table.concat(c, ", "))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"threads": [%s], "p50_us": %d, "p99_us": %d, "errors": {"connect": %d, '
    .. '"read": %d, "write": %d, "timeout": %d}}\n',
    table.concat(parts, ", "), latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout))
end
"""


@dataclass(frozen=True, slots=True)
class Params:
    servers: tuple[str, ...]
    processes: tuple[int, ...]
    connections: int
    wrk_threads: int
    seconds: int
    bare_seconds: int
    rounds: int
    jobs_per_phase: int
    callbacks_per_phase: int
    callback_items: int
    get_jobs: int
    reports_per_phase: int = 1000


# --- wrk -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RequestLine:
    method: str
    path: str
    token: str = "-"
    body: str = "-"

    def line(self) -> str:
        return f"{self.method}\t{self.path}\t{self.token}\t{self.body}"


def write_requests(path: Path, lines: list[RequestLine]) -> Path:
    path.write_text("".join(line.line() + "\n" for line in lines))
    return path


@dataclass(slots=True)
class WrkRun:
    issued: int
    answered: int
    seconds: float
    codes: dict[str, int]
    unexpected: int
    unmarked: int
    fillers: int
    p50_ms: float
    p99_ms: float
    socket_errors: dict[str, int]
    wrk_cpu_s: float

    @property
    def ops_per_s(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0


class Wrk:
    def __init__(self, workdir: Path, connections: int, threads: int) -> None:
        self.script = workdir / "tollgate_bench.lua"
        self.script.write_text(WRK_SCRIPT)
        self.connections = connections
        self.threads = threads

    async def run(self, url: str, requests: Path, *, mode: str, expect: int, marker: str | None,
                  seconds: int) -> WrkRun:
        """One wrk run; a 'once' run ends as soon as every thread has had its last answer."""
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = await asyncio.create_subprocess_exec(
            "wrk", "-t", str(self.threads), "-c", str(self.connections), "-d", f"{seconds}s",
            "--timeout", "30s", "-s", str(self.script), url, "--",
            str(requests), str(self.threads), mode, str(expect), marker or "-",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        stderr_lines: list[str] = []

        async def watch_stderr() -> None:
            assert proc.stderr is not None
            done = 0
            async for raw in proc.stderr:
                text = raw.decode(errors="replace").rstrip()
                if text == "BENCH_THREAD_DONE":
                    done += 1
                    if done == self.threads and proc.returncode is None:
                        proc.send_signal(signal.SIGINT)  # wakes wrk's main from its sleep
                else:
                    stderr_lines.append(text)

        watcher = asyncio.create_task(watch_stderr())
        stdout = (await proc.stdout.read()).decode(errors="replace")
        await proc.wait()
        await watcher
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        line = next((x for x in stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}):\n{stdout}\n"
                               + "\n".join(stderr_lines))
        data = json.loads(line.removeprefix("BENCH_JSON "))
        threads = data["threads"]
        codes: dict[str, int] = {}
        for thread in threads:
            for code, count in thread["codes"].items():
                codes[code] = codes.get(code, 0) + count
        started = [t["first"] for t in threads if t["first"] > 0]
        ended = [t["last"] for t in threads if t["last"] > 0]
        return WrkRun(
            issued=sum(t["issued"] for t in threads),
            answered=sum(t["real"] for t in threads),
            seconds=(max(ended) - min(started)) if started and ended else 0.0,
            codes=codes,
            unexpected=sum(t["unexpected"] for t in threads),
            unmarked=sum(t["unmarked"] for t in threads),
            fillers=sum(t["fillers"] for t in threads),
            p50_ms=data["p50_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            socket_errors=data["errors"],
            wrk_cpu_s=(cpu_after.ru_utime + cpu_after.ru_stime)
            - (cpu_before.ru_utime + cpu_before.ru_stime),
        )


# --- one measured phase ----------------------------------------------------------------------

@dataclass(slots=True)
class Phase:
    op: str
    server: str
    run: WrkRun
    server_cpu_s: float
    per_process_cpu_s: list[float]
    redis_cpu_s: float

    @property
    def ops_per_s(self) -> float:
        return self.run.ops_per_s

    @property
    def server_cpu_us_per_request(self) -> float:
        return self.server_cpu_s * 1e6 / self.run.answered if self.run.answered else 0.0

    def cores(self) -> dict[str, float]:
        wall = self.run.seconds or 1.0
        return {"server": round(self.server_cpu_s / wall, 2),
                "redis": round(self.redis_cpu_s / wall, 2),
                "wrk": round(self.run.wrk_cpu_s / wall, 2)}


async def redis_cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(wrk: Wrk, redis: Any, server: HttpServer, op: str, requests: Path, *,
                  mode: str, expect: int, marker: str | None, seconds: int) -> Phase:
    cpu_before = server.cpu_by_process()
    redis_before = await redis_cpu(redis)
    run = await wrk.run(server.url, requests, mode=mode, expect=expect, marker=marker,
                        seconds=seconds)
    redis_after = await redis_cpu(redis)
    cpu_after = server.cpu_by_process()
    if run.unexpected or run.unmarked or not run.answered:
        raise RuntimeError(
            f"{op} on {server.name}: {run.answered} answers, status codes {run.codes} "
            f"(expected {expect}), {run.unmarked} without {marker!r}: the phase measured "
            "something else than it claims")
    per_process = sorted((cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in cpu_after),
                         reverse=True)
    return Phase(op, server.name, run, sum(per_process), [round(x, 3) for x in per_process],
                 redis_after - redis_before)


# --- state, created off the clock ---------------------------------------------------------------

def job_body(items: int) -> str:
    return json.dumps({"items": [{"name": f"img-{i}.png", "content_type": "image/png",
                                  "size": 1024} for i in range(items)]}, separators=(",", ":"))


class Fixture:
    """Users, jobs and request lists, built through Core (replayed in pipelines) and the
    API itself; `free_slots` cancels every live job of the POST users between phases."""

    def __init__(self, stack: Stack, redis: Any, workdir: Path, params: Params) -> None:
        from bench.redis_side import ScriptRecorder
        from service.api.auth import issue_token
        from service.contract import callback_token
        from service.runtime import derived_secret
        from service.state.keys import KeySpace
        from service.state.store import Core

        self.stack = stack
        self.redis = redis
        self.workdir = workdir
        self.params = params
        self.keys = KeySpace(stack.prefix, stack.settings().buckets)
        self.core = Core(redis, self.keys)
        self.recorder = ScriptRecorder()
        self.scribe = Core(self.recorder, self.keys)
        self.issue_token = issue_token
        self.callback_secret = derived_secret(stack.secret, "callback").hex()
        self.callback_token = callback_token
        users = math.ceil(params.jobs_per_phase / JOBS_PER_USER)
        self.users = [f"bu{i}" for i in range(max(users, params.get_jobs))]
        self.tokens = {u: issue_token(stack.secret, u, ttl_s=4 * 3600) for u in self.users}
        self.admin_token = issue_token(stack.secret, "bench-admin", admin=True, ttl_s=4 * 3600)
        self.callback_owners = 0
        self.files = 0

    def file(self, lines: list[RequestLine]) -> Path:
        self.files += 1
        return write_requests(self.workdir / f"requests-{self.files}.tsv", lines)

    async def flush(self) -> None:
        from bench.redis_side import replay

        await replay(self.redis, self.recorder.take())

    async def start(self) -> None:
        from bench.redis_side import load_scripts_into

        await load_scripts_into(self.redis, list(self.scribe.scripts.values()))

    def admin_requests(self) -> Path:
        return self.file([RequestLine(
            "POST", "/admin/users", self.admin_token,
            json.dumps({"id": u, "plan": "pro", "credits": CREDITS}, separators=(",", ":")))
            for u in self.users])

    def warmup_requests(self, passes: int) -> Path:
        return self.file([RequestLine("GET", "/me", self.tokens[u])
                          for _ in range(passes) for u in self.users])

    def post_requests(self, items: int) -> Path:
        body = job_body(items)
        per_user = min(JOBS_PER_USER, math.ceil(self.params.jobs_per_phase / len(self.users)))
        return self.file([RequestLine("POST", "/jobs", self.tokens[u], body)
                          for _ in range(per_user) for u in self.users])

    async def free_slots(self) -> int:
        """Cancels every live job of the POST users: their slots are free again."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user in self.users:
                pipe.smembers(self.keys.user(user).active)
            active = await pipe.execute()
        count = 0
        for user, job_ids in zip(self.users, active, strict=True):
            for job_id in job_ids:
                await self.scribe.cancel(job_id, user, reason="bench", flush_delay_ms=86_400_000)
                count += 1
        await self.flush()
        return count

    async def queued_jobs(self, owners: list[str], items: int, meta: str) -> list[str]:
        jobs: list[tuple[str, str]] = []
        for owner in owners:
            job_id = self.keys.new_job_id(owner)
            await self.scribe.reserve(job_id=job_id, user_id=owner, total=items, price=1,
                                      hold_ttl_ms=86_400_000, meta_json=meta)
            jobs.append((owner, job_id))
        await self.flush()
        for from_state, to_state in (("created", "uploaded"), ("uploaded", "queued")):
            for owner, job_id in jobs:
                await self.scribe.transition(job_id, from_state, to_state, owner=owner)
            await self.flush()
        return [job_id for _, job_id in jobs]

    async def fresh_owners(self, count: int) -> list[str]:
        """The owners of `count` fresh jobs: fresh pro users, JOBS_PER_USER jobs each."""
        from service.state.plans import PLANS

        owners = []
        for _ in range(math.ceil(count / JOBS_PER_USER)):
            owner = f"cbo{self.callback_owners}"
            self.callback_owners += 1
            await self.scribe.ensure_user(owner, PLANS["pro"], CREDITS)
            owners.extend([owner] * JOBS_PER_USER)
        await self.flush()
        return owners[:count]

    async def callback_requests(self) -> Path:
        """Fresh queued jobs of `callback_items` items, owned by fresh pro users (a callback
        needs no user token, only the job's), and one item event per request."""

        items = self.params.callback_items
        count = math.ceil(self.params.callbacks_per_phase / items)
        owners = await self.fresh_owners(count)
        meta = json.dumps([{"name": f"img-{i}.png", "content_type": "image/png", "size": 1024}
                           for i in range(items)], separators=(",", ":"))
        job_ids = await self.queued_jobs(owners, items, meta)
        tokens = [self.callback_token(self.callback_secret, job_id, owner)
                  for job_id, owner in zip(job_ids, owners, strict=True)]
        lines = []
        for index in range(items):
            for job_id, token in zip(job_ids, tokens, strict=True):
                body = json.dumps({"idempotency_key": f"bench:{job_id}:{index}", "event": "item",
                                   "item_index": index, "ok": True}, separators=(",", ":"))
                lines.append(RequestLine("POST", f"/jobs/{job_id}/callback", token, body))
                if len(lines) >= self.params.callbacks_per_phase:
                    break
        # Item-major order: consecutive requests go to different jobs.
        return self.file(lines[: self.params.callbacks_per_phase])

    async def batch_requests(self) -> tuple[Path, str]:
        """Fresh queued 8-item jobs, each reported whole in one request (`event: "items"`,
        the worker's own idempotency keys and output keys), consecutive requests on different
        jobs; and one such body, for the bare POST of the same size."""
        from service.contract import item_callback_key, output_key

        count = self.params.reports_per_phase
        owners = await self.fresh_owners(count)
        job_ids = await self.queued_jobs(owners, 8, job_body(8).removeprefix('{"items":')[:-1])
        lines = []
        for job_id, owner in zip(job_ids, owners, strict=True):
            body = json.dumps({"event": "items", "items": [
                {"index": i, "ok": True, "idempotency_key": item_callback_key(job_id, i),
                 "output_key": output_key(job_id, i)} for i in range(8)]},
                separators=(",", ":"))
            lines.append(RequestLine("POST", f"/jobs/{job_id}/callback",
                                     self.callback_token(self.callback_secret, job_id, owner),
                                     body))
        return self.file(lines), lines[0].body

    async def get_requests(self) -> Path:
        """Running 8-item jobs with items 0-3 done, one per POST user, read by their owner."""
        from service.contract import output_key

        owners = self.users[: self.params.get_jobs]
        meta = json.loads(job_body(8))["items"]
        job_ids = await self.queued_jobs(owners, 8, json.dumps(meta))
        for owner, job_id in zip(owners, job_ids, strict=True):
            await self.scribe.transition(job_id, "queued", "running", owner=owner,
                                         lease_ms=86_400_000)
        await self.flush()
        for owner, job_id in zip(owners, job_ids, strict=True):
            for index in range(4):
                await self.scribe.item_result(
                    job_id, owner, callback_key=f"get:{index}", index=index, ok=True,
                    detail=output_key(job_id, index), lease_ms=86_400_000,
                    flush_delay_ms=86_400_000)
        await self.flush()
        return self.file([RequestLine("GET", f"/jobs/{job_id}", self.tokens[owner])
                          for owner, job_id in zip(owners, job_ids, strict=True)])


# --- the run ---------------------------------------------------------------------------------

@dataclass(slots=True)
class ServerRun:
    """The phases of one server at one process count, in the order they ran."""

    server: str
    processes: int
    phases: list[Phase] = field(default_factory=list)

    def ratios(self, op: str) -> tuple[list[Phase], list[float], list[float]]:
        ops, ratios, cpu_ratios = [], [], []
        for i, phase in enumerate(self.phases):
            if phase.op != op:
                continue
            around = [p for p in (self.phases[i - 1], self.phases[i + 1]) if p.op == "bare"]
            bare_rate = sum(p.ops_per_s for p in around) / len(around)
            bare_cpu = sum(p.server_cpu_us_per_request for p in around) / len(around)
            ops.append(phase)
            ratios.append(phase.ops_per_s / bare_rate)
            if phase.server_cpu_us_per_request:
                cpu_ratios.append(bare_cpu / phase.server_cpu_us_per_request)
        return ops, ratios, cpu_ratios


def phase_extra(phases: list[Phase]) -> dict[str, Any]:
    return {
        "requests": sum(p.run.answered for p in phases),
        "p50_ms": round(median([p.run.p50_ms for p in phases]), 2),
        "p99_ms": round(median([p.run.p99_ms for p in phases]), 2),
        "server_cpu_us_per_request": round(median(
            [p.server_cpu_us_per_request for p in phases]), 1),
        "cores": phases[-1].cores(),
        "per_process_cpu_s": phases[-1].per_process_cpu_s,
        "status_codes": phases[-1].run.codes,
        "wrk_cpu_s": round(sum(p.run.wrk_cpu_s for p in phases), 3),
        "phase_seconds": [round(p.run.seconds, 2) for p in phases],
    }


def server_result(run: ServerRun, params: Params, machine: dict[str, Any], quick: bool
                  ) -> Result:
    bare = [p for p in run.phases if p.op == "bare"]
    bare_post = [p for p in run.phases if p.op == "bare_post"]
    bare_post_rate = median([p.ops_per_s for p in bare_post])
    rows = []
    for op in OPERATIONS:
        phases, ratios, cpu_ratios = run.ratios(op)
        if not phases:
            continue
        extra = phase_extra(phases)
        extra["round_ratios"] = [round(r, 3) for r in ratios]
        extra["server_cpu_ratio"] = round(median(cpu_ratios), 3) if cpu_ratios else None
        extra["used_up_request_list"] = any(p.run.fillers > 0 for p in phases)
        rate = median([p.ops_per_s for p in phases])
        if op in POST_OPERATIONS and bare_post_rate:
            extra["ratio_to_bare_post"] = round(rate / bare_post_rate, 3)
        same = [p for p in run.phases if p.op == f"bare_same_{op}"]
        if same:
            extra["ratio_to_bare_post_same_body"] = round(
                rate / median([p.ops_per_s for p in same]), 3)
            extra["target_vs_same_body"] = SAME_BODY_TARGETS[op]
        rows.append(Row(LABELS[op], rate, median(ratios), None, extra))
    if bare_post:
        extra = phase_extra(bare_post)
        bare_post_cpu = extra["server_cpu_us_per_request"]
        bare_cpu = median([p.server_cpu_us_per_request for p in bare])
        extra["server_cpu_ratio"] = round(bare_cpu / bare_post_cpu, 3) if bare_post_cpu else None
        extra["ratio_to_bare_post"] = 1.0
        rows.append(Row(BARE_POST_LABEL, bare_post_rate,
                        bare_post_rate / median([p.ops_per_s for p in bare]), None, extra))
    for op, label in SAME_BODY_LABELS.items():
        same = [p for p in run.phases if p.op == f"bare_same_{op}"]
        if same:
            extra = phase_extra(same)
            extra["ratio_to_bare_post_same_body"] = 1.0
            same_rate = median([p.ops_per_s for p in same])
            rows.append(Row(label, same_rate, same_rate / median([p.ops_per_s for p in bare]),
                            None, extra))
    bare_extra = phase_extra(bare)
    bare_extra["server_cpu_ratio"] = 1.0
    noun = "process" if run.processes == 1 else "processes"
    return Result(
        name=f"{NAME}_{run.server}_{run.processes}p",
        title=(f"HTTP on {run.server}, {run.processes} server {noun}: requests/s with wrk "
               f"(1 thread, {params.connections} connections), ratio to a bare Litestar "
               "endpoint on the same server"),
        machine=machine,
        params={**asdict(params), "server": run.server, "server_processes": run.processes},
        baseline=Baseline("GET /bare (bare Litestar)", median([p.ops_per_s for p in bare]),
                          bare_extra),
        rows=rows,
        quick=quick,
    )


def comparison_result(runs: list[ServerRun], params: Params, machine: dict[str, Any],
                      quick: bool) -> Result | None:
    """granian over uvicorn for the same endpoint and process count."""
    by_key = {(r.server, r.processes): r for r in runs}
    rows = []
    for processes in params.processes:
        uv, gr = by_key.get(("uvicorn", processes)), by_key.get(("granian", processes))
        if uv is None or gr is None:
            continue
        for op in ("bare", "bare_post", *OPERATIONS):
            uv_phases = [p for p in uv.phases if p.op == op]
            gr_phases = [p for p in gr.phases if p.op == op]
            if not uv_phases or not gr_phases:
                continue
            uv_rate = median([p.ops_per_s for p in uv_phases])
            gr_rate = median([p.ops_per_s for p in gr_phases])
            uv_cpu = median([p.server_cpu_us_per_request for p in uv_phases])
            gr_cpu = median([p.server_cpu_us_per_request for p in gr_phases])
            label = {"bare": "GET /bare", "bare_post": "POST /bare"}.get(op) or LABELS[op]
            rows.append(Row(f"{label}, {processes}p", gr_rate, gr_rate / uv_rate, None, {
                "uvicorn_ops_per_s": round(uv_rate, 1), "granian_ops_per_s": round(gr_rate, 1),
                "uvicorn_cpu_us_per_request": round(uv_cpu, 1),
                "granian_cpu_us_per_request": round(gr_cpu, 1),
                "server_cpu_ratio": round(uv_cpu / gr_cpu, 3) if gr_cpu else None,
            }))
    if not rows:
        return None
    base = [p for r in runs if r.server == "uvicorn" and r.processes == params.processes[0]
            for p in r.phases if p.op == "bare"]
    return Result(
        name="http_servers",
        title=("HTTP servers: granian's requests/s over uvicorn's, same endpoint and process "
               "count, same run (ratio > 1: granian faster)"),
        machine=machine,
        params=asdict(params),
        baseline=Baseline(f"uvicorn (same endpoint); shown: GET /bare, "
                          f"{params.processes[0]}p", median([p.ops_per_s for p in base])),
        rows=rows,
        quick=quick,
    )


async def run_process_count(processes: int, params: Params, stack: Stack, fixture: Fixture,
                            wrk: Wrk, redis: Any, users_created: bool) -> list[ServerRun]:
    apis = {s: HttpServer(f"tollgate-{s}-{processes}p", "tollgate", s, processes, stack)
            for s in params.servers}
    bares = {s: HttpServer(f"bare-{s}-{processes}p", "bare", s, processes, stack)
             for s in params.servers}
    everything = [*apis.values(), *bares.values()]
    runs = {s: ServerRun(s, processes) for s in params.servers}
    try:
        from bench.stack import start_all

        await asyncio.to_thread(start_all, everything)
        bare_requests = fixture.file([RequestLine("GET", "/bare")])
        bare_post_requests = fixture.file([RequestLine("POST", "/bare", "-", BARE_POST_BODY)])
        # The bodies of the rows with a same-body target, sent to POST /bare/any.
        same_body = {"post1": job_body(1)}
        if not users_created:
            first = next(iter(apis.values()))
            await wrk.run(first.url, fixture.admin_requests(), mode="once", expect=201,
                          marker='"plan":"pro"', seconds=120)
        # The users exist already (POST /admin/users wrote their SQL row and Redis record):
        # the pass only opens every process's Redis and SQL pools before the clock runs.
        warmup = fixture.warmup_requests(processes)
        for api in apis.values():
            await wrk.run(api.url, warmup, mode="once", expect=200, marker='"pro"',
                          seconds=120)

        async def bare(server: str) -> None:
            runs[server].phases.append(await measure(
                wrk, redis, bares[server], "bare", bare_requests, mode="cycle", expect=200,
                marker='"ok"', seconds=params.bare_seconds))

        for server in params.servers:
            await bare(server)
        for _ in range(params.rounds):
            for op in OPERATIONS:
                get_file: Path | None = None
                for server in params.servers:
                    await fixture.free_slots()
                    if op in ("post1", "post8"):
                        requests = fixture.post_requests(1 if op == "post1" else 8)
                        spec = dict(mode="once", expect=201, marker='"status":"created"')
                    elif op == "callback":
                        requests = await fixture.callback_requests()
                        spec = dict(mode="once", expect=200, marker='"duplicate":false')
                    elif op == "batch":
                        requests, report_body = await fixture.batch_requests()
                        same_body["batch"] = report_body
                        spec = dict(mode="once", expect=200, marker='"counted":8')
                    else:
                        get_file = get_file or await fixture.get_requests()
                        requests = get_file
                        spec = dict(mode="cycle", expect=200, marker='"items"')
                    phase = await measure(wrk, redis, apis[server], op, requests,
                                          seconds=params.seconds, **spec)  # type: ignore[arg-type]
                    runs[server].phases.append(phase)
                    print(f"  {server} {processes}p {op}: {phase.ops_per_s:,.0f}/s "
                          f"({phase.run.answered} in {phase.run.seconds:.2f}s, "
                          f"{phase.server_cpu_us_per_request:.0f} µs server CPU/request, "
                          f"cores {phase.cores()})", flush=True)
                    await bare(server)
                    last = runs[server].phases[-1]
                    print(f"  {server} {processes}p bare: {last.ops_per_s:,.0f}/s "
                          f"({last.server_cpu_us_per_request:.0f} µs/request)", flush=True)
            for server in params.servers:
                runs[server].phases.append(await measure(
                    wrk, redis, bares[server], "bare_post", bare_post_requests, mode="cycle",
                    expect=200, marker='"event"', seconds=params.bare_seconds))
                last = runs[server].phases[-1]
                print(f"  {server} {processes}p bare POST: {last.ops_per_s:,.0f}/s "
                      f"({last.server_cpu_us_per_request:.0f} µs/request)", flush=True)
                for op, body in same_body.items():
                    runs[server].phases.append(await measure(
                        wrk, redis, bares[server], f"bare_same_{op}",
                        fixture.file([RequestLine("POST", "/bare/any", "-", body)]),
                        mode="cycle", expect=200, marker='"fields"',
                        seconds=params.bare_seconds))
                    last = runs[server].phases[-1]
                    print(f"  {server} {processes}p bare POST, {op} body ({len(body)} bytes): "
                          f"{last.ops_per_s:,.0f}/s ({last.server_cpu_us_per_request:.0f} "
                          "µs/request)", flush=True)
        await fixture.free_slots()
    finally:
        for process in everything:
            process.stop()
    return list(runs.values())


async def main_async(args: Any) -> list[Result]:
    from redis.asyncio import Redis

    from bench.redis_side import redis_facts

    quick: bool = args.quick
    params = Params(
        servers=tuple(args.servers.split(",")),
        processes=tuple(int(x) for x in (args.processes or ("1" if quick else "1,2")).split(",")),
        connections=args.connections,
        wrk_threads=1,
        seconds=args.seconds or (1 if quick else 2),
        bare_seconds=args.bare_seconds or 1,
        rounds=args.rounds or (1 if quick else 2),
        jobs_per_phase=args.jobs or (300 if quick else 3000),
        callbacks_per_phase=args.callbacks or (400 if quick else 10000),
        callback_items=args.callback_items or (100 if quick else 1000),
        get_jobs=40 if quick else 200,
        reports_per_phase=args.reports or (100 if quick else 1500),
    )
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    prefix = args.prefix or fresh_prefix()
    database = Database(args.postgres_dsn)
    stack = Stack(args.redis_url, database, prefix)
    workdir = Path(tempfile.mkdtemp(prefix="tgbench-http-"))
    redis = Redis.from_url(args.redis_url, decode_responses=True, max_connections=16)
    runs: list[ServerRun] = []
    try:
        facts = await redis_facts(redis)
        await asyncio.to_thread(database.create)
        print(f"database {database.name} (dropped at the end), key prefix {prefix}", flush=True)
        await asyncio.to_thread(stack.migrate)
        pg_version = await asyncio.to_thread(database.server_version)
        fixture = Fixture(stack, redis, workdir, params)
        await fixture.start()
        wrk = Wrk(workdir, params.connections, params.wrk_threads)
        for index, processes in enumerate(params.processes):
            print(f"{processes} server process(es) per server:", flush=True)
            runs += await run_process_count(processes, params, stack, fixture, wrk, redis,
                                            users_created=index > 0)
    finally:
        await delete_run_keys(args.redis_url, prefix)
        await redis.aclose()
        await asyncio.to_thread(database.drop)
        stack.remove_storage()
        shutil.rmtree(workdir, ignore_errors=True)

    wrk_version = "wrk 4 (LuaJIT)"
    machine = machine_info(**facts, postgres_server=pg_version, load_generator=wrk_version)
    results = [server_result(run, params, machine, quick) for run in runs]
    comparison = comparison_result(runs, params, machine, quick)
    return [*results, *([comparison] if comparison else [])]


COLUMNS = [("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
           ("server_cpu_us_per_request", "server CPU µs/req"),
           ("server_cpu_ratio", "server-CPU ratio"), ("ratio_to_bare_post", "ratio to bare POST"),
           ("ratio_to_bare_post_same_body", "ratio to bare POST, same body"),
           ("target_vs_same_body", "target (same body)"),
           ("cores", "cores used"),
           ("requests", "requests")]
COMPARE_COLUMNS = [("uvicorn_ops_per_s", "uvicorn req/s"), ("granian_ops_per_s", "granian req/s"),
                   ("uvicorn_cpu_us_per_request", "uvicorn CPU µs/req"),
                   ("granian_cpu_us_per_request", "granian CPU µs/req"),
                   ("server_cpu_ratio", "CPU ratio (uvicorn/granian)")]


def main(argv: list[str] | None = None) -> int:
    parser = stack_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    parser.add_argument("--servers", default="uvicorn,granian")
    parser.add_argument("--processes", default=None, help="default 1,2 (1 with --quick)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=0,
                        help="cap of an endpoint phase, whole seconds; default 2 (1 quick)")
    parser.add_argument("--bare-seconds", type=int, default=0, help="default 1")
    parser.add_argument("--rounds", type=int, default=0, help="default 2 (1 with --quick)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="POST /jobs requests per phase; default 3000 (300 quick)")
    parser.add_argument("--callbacks", type=int, default=0,
                        help="callbacks per phase; default 10000 (400 quick)")
    parser.add_argument("--reports", type=int, default=0,
                        help="batched 8-item reports per phase; default 1500 (100 quick)")
    parser.add_argument("--callback-items", type=int, default=0,
                        help="items per callback job; default 1000 (100 quick)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    from bench.common import run

    results = run(main_async(args))
    for result in results:
        print()
        if result.name == "http_servers":
            report(result, args.out, COMPARE_COLUMNS)
        else:
            report(result, args.out, COLUMNS)
    print(f"\n{time.monotonic() - started:.0f} s in all; pid {os.getpid()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
