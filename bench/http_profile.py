"""Where an API request's CPU time goes: py-spy samples of one tollgate API process (and of
the bare app) under the load of bench/http_api.py, attributed to layers, in microseconds of
server CPU per request.

    python bench/http_profile.py [--server uvicorn] [--ops bare,post1,post8,callback,batch,get]
                                 [--seconds 5] [--keep DIR]

Needs py-spy (`pip install py-spy`) and the rights to sample a process (root, or
ptrace_scope 0). Each sample is given to the innermost frame that belongs to a layer (a
redis-py frame under tollgate's code counts as redis-py); a layer's share of the samples
times the process's measured CPU time per request gives its microseconds. uvicorn is the
default because granian's own threads are native code that py-spy cannot attribute.
Prints a Markdown table; writes no result file (these are not ratios).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/http_profile.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_POSTGRES_DSN, base_parser, fresh_prefix, run
from bench.http_api import Fixture, Params, RequestLine, Wrk, measure, stop_on_sigterm
from bench.stack import Database, HttpServer, Stack, delete_run_keys, start_all

# First match wins, scanning a sample's stack from the innermost frame outwards.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # tollgate's AutoPipeline and hiredis packer are redis client work too.
    ("redis-py client",
     ("redis/", "hiredis", "service/state/autopipeline.py", "service/state/clients.py")),
    ("JWT decode (PyJWT)", ("jwt/", "security/jwt")),
    ("metrics middleware", ("prometheus", "service/api/metrics.py")),
    ("storage URL signing", ("service/storage/",)),
    ("tollgate code (service/)", ("service/",)),
    ("msgspec / json", ("msgspec", "json/")),
    ("Litestar request parsing (kwargs, body, DI)",
     ("litestar/_kwargs", "litestar/_signature", "litestar/connection", "litestar/di",
      "litestar/datastructures")),
    ("Litestar response", ("litestar/response", "litestar/serialization")),
    ("Litestar routing + middleware", ("litestar/",)),
    ("server (uvicorn/granian, httptools)", ("uvicorn/", "granian", "httptools")),
    ("asyncio / uvloop", ("asyncio/", "uvloop")),
]
OTHER = "other (native, stdlib)"


def attribute(raw: Path) -> Counter[str]:
    """py-spy's raw format: one line per distinct stack, frames joined by ';', then a count."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        for frame in reversed(stack.split(";")):
            layer = next((name for name, marks in LAYERS if any(m in frame for m in marks)),
                         None)
            if layer is not None:
                counts[layer] += int(number)
                break
        else:
            counts[OTHER] += int(number)
    return counts


def keep_raw(raw: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(raw, folder / raw.name)


async def profile(args: Any) -> dict[str, dict[str, float]]:
    from redis.asyncio import Redis

    ops = args.ops.split(",")
    params = Params(servers=(args.server,), processes=(1,), connections=64, wrk_threads=1,
                    seconds=args.seconds + 1, bare_seconds=args.seconds + 1, rounds=1,
                    jobs_per_phase=8000, callbacks_per_phase=12000, callback_items=1000,
                    get_jobs=200, reports_per_phase=8000)
    prefix = args.prefix or fresh_prefix()
    database = Database(args.postgres_dsn)
    stack = Stack(args.redis_url, database, prefix)
    workdir = Path(tempfile.mkdtemp(prefix="tgbench-profile-"))
    redis = Redis.from_url(args.redis_url, decode_responses=True)
    api = HttpServer("tollgate", "tollgate", args.server, 1, stack)
    bare = HttpServer("bare", "bare", args.server, 1, stack)
    table: dict[str, dict[str, float]] = {}
    try:
        await asyncio.to_thread(database.create)
        print(f"database {database.name} (dropped at the end), key prefix {prefix}", flush=True)
        await asyncio.to_thread(stack.migrate)
        fixture = Fixture(stack, redis, workdir, params)
        await fixture.start()
        wrk = Wrk(workdir, params.connections, 1)
        await asyncio.to_thread(start_all, [api, bare])
        await wrk.run(api.url, fixture.admin_requests(), mode="once", expect=201, marker=None,
                      seconds=120)
        await wrk.run(api.url, fixture.warmup_requests(1), mode="once", expect=200,
                      marker=None, seconds=120)
        for op in ops:
            await fixture.free_slots()
            target, mode, expect = api, "once", 200
            if op in ("post1", "post8"):
                requests, expect = fixture.post_requests(1 if op == "post1" else 8), 201
            elif op == "callback":
                requests = await fixture.callback_requests()
            elif op == "batch":
                requests, _ = await fixture.batch_requests()
            elif op == "get":
                requests, mode = await fixture.get_requests(), "cycle"
            elif op == "bare":
                target, mode = bare, "cycle"
                requests = fixture.file([RequestLine("GET", "/bare")])
            else:
                raise SystemExit(f"unknown operation {op!r}")
            raw = workdir / f"{op}.txt"
            spy = await asyncio.create_subprocess_exec(
                "py-spy", "record", "-p", str(target.pids()[-1]), "-d", str(args.seconds),
                "-r", "250", "-f", "raw", "-o", str(raw), "--nonblocking",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            phase = await measure(wrk, redis, target, op, requests, mode=mode, expect=expect,
                                  marker=None, seconds=params.seconds)
            _, spy_err = await spy.communicate()
            if spy.returncode != 0 or not raw.exists():
                raise RuntimeError(f"py-spy failed: {spy_err.decode(errors='replace')}")
            if args.keep:
                await asyncio.to_thread(keep_raw, raw, Path(args.keep))
            counts = attribute(raw)
            total = sum(counts.values()) or 1
            cpu = phase.server_cpu_us_per_request
            table[op] = {name: count / total * cpu for name, count in counts.items()}
            table[op]["total"] = cpu
            print(f"  {op}: {phase.ops_per_s:,.0f}/s, {cpu:,.0f} µs server CPU/request, "
                  f"{total} samples", flush=True)
    finally:
        api.stop()
        bare.stop()
        await delete_run_keys(args.redis_url, prefix)
        await redis.aclose()
        await asyncio.to_thread(database.drop)
        stack.remove_storage()
        shutil.rmtree(workdir, ignore_errors=True)
    return table


def markdown(table: dict[str, dict[str, float]], server: str) -> str:
    ops = list(table)
    lines = [f"## Server CPU per request by layer, µs ({server}, 1 process, py-spy)", "",
             "| layer | " + " | ".join(ops) + " |", "|---|" + "---:|" * len(ops)]
    for name in [*(name for name, _ in LAYERS), OTHER]:
        lines.append(f"| {name} | " + " | ".join(f"{table[op].get(name, 0.0):,.0f}"
                                                 for op in ops) + " |")
    lines.append("| **total (measured)** | " + " | ".join(f"{table[op]['total']:,.0f}"
                                                        for op in ops) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "http_profile")
    parser.add_argument("--postgres-dsn", default=DEFAULT_POSTGRES_DSN)
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    parser.add_argument("--ops", default="bare,post1,post8,callback,get")
    parser.add_argument("--seconds", type=int, default=5, help="of sampling per operation")
    parser.add_argument("--keep", default="",
                        help="a folder to keep py-spy's raw samples in (<op>.txt)")
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    if args.quick:
        args.seconds = 1
    table = run(profile(args))
    print()
    print(markdown(table, args.server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
