"""What bounds issue 11's restated HTTP targets: the framework's own floor for a POST /jobs
(1 item) and a batched 8-item report, with no tollgate logic at all.

    python bench/http_floor.py [--seconds 3] [--rounds 2] [--server granian]

One Litestar app (`create_app` below), served like `tollgate api` (service.cli.serve, one
process), answers the very bodies bench/http_api.py sends, at four depths:

  any        `POST /bare/any`'s handler: any JSON object decoded into a dict and dropped
             (the denominator of the restated targets);
  struct     the body decoded into tollgate's own request Struct (JobCreate, CallbackIn),
             and an answer of the same Struct and size as tollgate's (JobCreated with one
             upload URL, ItemsCallbackOut) encoded back: what Litestar costs for the shapes
             alone;
  redis      `struct` plus one EVALSHA round trip (a one-key script) through tollgate's
             AutoPipeline and redis-py client: the least any endpoint that touches Redis
             pays;
  jwt        `redis` plus tollgate's JWT middleware (a cached token) and its metrics and
             body-deadline middlewares, as the user endpoints run (POST /jobs only);
  sig        `jwt` with POST /jobs's own handler signature: the injected runtime (`rt`),
             the declared Idempotency-Key header parameter, the user's request;
  mw         `redis` plus the metrics and body-deadline middlewares (the report only: the
             callback path is not behind the JWT middleware).

wrk loads each path with the same body in turn (rounds alternate); the server's CPU per
request comes from /proc. Prints a Markdown table: µs of server CPU per request and the
ratio of `any` to each depth, the best ratio a tollgate endpoint could reach. Writes no
result file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/http_floor.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestar import Litestar, Request, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.middleware import DefineMiddleware
from litestar.params import JSONBody

from service.api.auth import make_jwt_auth
from service.api.connections import body_deadline_middleware
from service.api.metrics import metrics_middleware
from service.api.params import OptionalIdempotencyKey
from service.api.schemas import CallbackIn, ItemsCallbackOut, JobCreate, JobCreated, body
from service.settings import Settings
from service.state.autopipeline import AutoPipeline
from service.state.clients import state_redis

JOB_BODY = json.dumps({"items": [{"name": "img-0.png", "content_type": "image/png",
                                  "size": 1024}]})
REPORT_BODY = json.dumps({"event": "items", "items": [
    {"idempotency_key": f"01JDZQ8W2R3T4Y5U6I7O8P9A0S-1:{i}", "index": i, "ok": True}
    for i in range(8)]})
T = "2026-11-30T00:00:00.000000Z"
# The answer of a created 1-item job, as tollgate's create_job builds it.
CREATED_VIEW: dict[str, Any] = {
    "id": "01jdzq8w2r3t4y5u6i7o8p9a0s-17", "status": "created", "total_items": 1,
    "done_items": 0, "failed_items": 0, "progress": 0.0, "cost": 1, "charged": 0,
    "refunded": 0, "rule_id": None, "model": "default", "params": {}, "created_at": T,
    "updated_at": T, "started_at": None, "finished_at": None, "reason": None,
    "queue_position": None, "result_expired": False,
    "links": {"self": "http://127.0.0.1:8000/jobs/x", "events": "http://127.0.0.1:8000/jobs/x/events",
              "cancel": "http://127.0.0.1:8000/jobs/x/cancel"},
    "uploads": [{"index": 0, "url": "http://127.0.0.1:8000/files/jobs/x/in/0?m=PUT&exp=1796000045"
                 "&max=1024&sig=hy9gEFWvSjfSlXti0fUx3H8C2wxRXaa0RF31_0Uycck",
                 "method": "PUT", "headers": {"Content-Type": "image/png"}, "expires_at": T}],
    "idempotent_replay": False,
}
SECRET = "floor-secret-floor-secret-floor-secret"
SCRIPT = "return redis.call('EXISTS', KEYS[1])"


def _state_of(state: State) -> Any:
    return state.pipe


async def _one_round_trip(request: Request[Any, Any, Any]) -> None:
    pipe, sha = request.app.state.pipe, request.app.state.sha
    await pipe.evalsha(sha, 1, "tgfloor:k")


def create_app() -> Litestar:
    @post("/any", status_code=200)
    async def any_body(data: dict[str, Any]) -> dict[str, object]:
        return {"ok": True, "service": "bare", "fields": len(data)}

    @post("/struct/jobs", status_code=201)
    async def struct_jobs(data: JSONBody[JobCreate]) -> JobCreated:
        return body(JobCreated, dict(CREATED_VIEW))

    @post("/redis/jobs", status_code=201)
    async def redis_jobs(request: Request[Any, Any, Any], data: JSONBody[JobCreate]
                         ) -> JobCreated:
        await _one_round_trip(request)
        return body(JobCreated, dict(CREATED_VIEW))

    @post("/struct/report", status_code=200)
    async def struct_report(data: JSONBody[CallbackIn]) -> ItemsCallbackOut:
        return ItemsCallbackOut(counted=len(data.items or []), duplicates=0, status="running",
                                done_items=8, failed_items=0)

    @post("/redis/report", status_code=200)
    async def redis_report(request: Request[Any, Any, Any], data: JSONBody[CallbackIn]
                           ) -> ItemsCallbackOut:
        await _one_round_trip(request)
        return ItemsCallbackOut(counted=len(data.items or []), duplicates=0, status="running",
                                done_items=8, failed_items=0)

    # As in tollgate, these two run after routing; the other paths go without them.
    @post("/jwt/jobs", status_code=201,
          middleware=[metrics_middleware,
                      DefineMiddleware(body_deadline_middleware, timeout_s=30.0)])
    async def jwt_jobs(request: Request[Any, Any, Any], data: JSONBody[JobCreate]
                       ) -> JobCreated:
        await _one_round_trip(request)
        return body(JobCreated, dict(CREATED_VIEW))

    @post("/mw/report", status_code=200,
          middleware=[metrics_middleware,
                      DefineMiddleware(body_deadline_middleware, timeout_s=30.0)])
    async def mw_report(request: Request[Any, Any, Any], data: JSONBody[CallbackIn]
                        ) -> ItemsCallbackOut:
        await _one_round_trip(request)
        return ItemsCallbackOut(counted=len(data.items or []), duplicates=0, status="running",
                                done_items=8, failed_items=0)

    @post("/sig/jobs", status_code=201, dependencies={"rt": Provide(_state_of,
                                                                      sync_to_thread=False)},
          middleware=[metrics_middleware,
                      DefineMiddleware(body_deadline_middleware, timeout_s=30.0)])
    async def sig_jobs(request: Request[Any, Any, Any], rt: NamedDependency[Any],
                       data: JSONBody[JobCreate], idempotency_key: OptionalIdempotencyKey = None
                       ) -> JobCreated:
        await _one_round_trip(request)
        return body(JobCreated, dict(CREATED_VIEW))

    settings = Settings(redis_url=os.environ.get("FLOOR_REDIS_URL", "redis://127.0.0.1:6379/0"),
                        jwt_secret=SECRET)
    auth = make_jwt_auth(settings, SECRET)
    auth.exclude = ["^/any", "^/struct/", "^/redis/", "^/mw/"]
    client = state_redis(settings)  # the API's own client (hiredis packing, blocking pool)

    async def startup(app: Litestar) -> None:
        app.state.pipe = AutoPipeline(client)
        app.state.sha = await client.script_load(SCRIPT)

    return Litestar(
        route_handlers=[any_body, struct_jobs, redis_jobs, struct_report, redis_report,
                        jwt_jobs, sig_jobs, mw_report],
        on_startup=[startup], on_app_init=[auth.on_app_init], debug=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _group_cpu_s(pgid: int) -> float:
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def _wrk(url: str, body: str, token: str | None, seconds: int, workdir: Path
         ) -> int:
    script = workdir / "post.lua"
    headers = 'wrk.headers["Content-Type"] = "application/json"\n'
    if token:
        headers += f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n{headers}')
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    requests = int(next(line for line in out.splitlines()
                        if "requests in" in line).split()[0])
    bad = next((line for line in out.splitlines() if "Non-2xx" in line), None)
    if bad:
        raise RuntimeError(f"{url}: {bad}")
    return requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--server", choices=["granian", "uvicorn"], default="granian")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--quick", action="store_true",
                        help="one round of 1 s: only proves the benchmark works")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 1, 1
    from service.api.auth import issue_token

    token = issue_token(SECRET, "floor-user", ttl_s=3600)
    port = _free_port()
    env = {**os.environ, "FLOOR_REDIS_URL": args.redis_url, "TOLLGATE_JWT_SECRET": SECRET}
    server = subprocess.Popen(
        [sys.executable, "-c", "from service.cli.serve import serve; "
         f"serve('bench.http_floor:create_app', host='127.0.0.1', port={port}, workers=1, "
         f"server={args.server!r})"],
        cwd=Path(__file__).resolve().parent.parent, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    rows = [("POST /jobs (1 item)", JOB_BODY, ["any", "struct/jobs", "redis/jobs", "jwt/jobs",
                                                   "sig/jobs"]),
            ("batched report (8 items)", REPORT_BODY,
             ["any", "struct/report", "redis/report", "mw/report"])]
    cpu: dict[tuple[str, str], list[float]] = {}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the floor app did not start") from None
                time.sleep(0.2)
        with tempfile.TemporaryDirectory() as folder:
            for _label, payload, paths in rows:  # warm-up
                for path in paths:
                    _wrk(f"{base}/{path}", payload, token, 1, Path(folder))
            for _ in range(args.rounds):
                for label, payload, paths in rows:
                    for path in paths:
                        before = _group_cpu_s(server.pid)
                        answered = _wrk(f"{base}/{path}", payload, token, args.seconds,
                                        Path(folder))
                        used = _group_cpu_s(server.pid) - before
                        cpu.setdefault((label, path), []).append(used * 1e6 / answered)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(f"## Framework floor ({args.server}, 1 process): server CPU µs per request, "
          f"{args.rounds} rounds of {args.seconds} s\n")
    print("| body | path | µs/request (rounds) | `any` / this |")
    print("|---|---|---:|---:|")
    for label, _, paths in rows:
        floor = sum(cpu[(label, "any")]) / len(cpu[(label, "any")])
        for path in paths:
            values = cpu[(label, path)]
            mean = sum(values) / len(values)
            shown = ", ".join(f"{v:.0f}" for v in values)
            print(f"| {label} | /{path} | {mean:.0f} ({shown}) | {floor / mean:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
