"""Container health checks for tollgate's image: exit 0 when healthy, 1 (and one line) when not.

    healthcheck.py http URL [--auth-env USER_VAR:PASSWORD_VAR]   a 2xx answer from URL
    healthcheck.py worker                                         an RQ worker of this host
    healthcheck.py flush-lag METRICS_URL [--max-lag SECONDS]      finished jobs reach SQL

Standard library only, plus redis and rq (installed with tollgate) for `worker`, so the check
does not depend on where tollgate keeps its own modules.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import sys
import urllib.error
import urllib.request
from typing import Any

TIMEOUT_S = 3.0
FLUSH_LAG_METRIC = "tollgate_flush_lag_seconds"


class Unhealthy(Exception):
    pass


def check_http(url: str, auth_env: str | None = None) -> str:
    request = urllib.request.Request(url)
    if auth_env:
        user_var, _, password_var = auth_env.partition(":")
        pair = f"{os.environ.get(user_var, '')}:{os.environ.get(password_var, '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return f"{url} answered {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        raise Unhealthy(f"{url}: {exc}") from exc


def registered_worker_names(connection: Any, hostname: str) -> list[str]:
    """RQ workers of this host whose heartbeat key is still alive.

    A worker's key expires when it stops sending heartbeats (hung or killed), and a worker
    that stops cleanly removes it, so a live key means a worker loop that is running.
    """
    from rq import Worker

    return [w.name for w in Worker.all(connection=connection) if w.hostname == hostname]


def check_worker() -> str:
    import redis

    url = os.environ.get("TOLLGATE_QUEUE_REDIS_URL") or os.environ.get("TOLLGATE_REDIS_URL")
    if not url:
        raise Unhealthy("no TOLLGATE_QUEUE_REDIS_URL or TOLLGATE_REDIS_URL: no shared queue")
    hostname = socket.gethostname()
    try:
        with redis.Redis.from_url(url, socket_timeout=TIMEOUT_S) as connection:
            names = registered_worker_names(connection, hostname)
    except redis.RedisError as exc:
        raise Unhealthy(f"queue Redis: {exc}") from exc
    if not names:
        raise Unhealthy(f"no RQ worker of host {hostname} has a live heartbeat")
    return f"workers alive: {', '.join(sorted(names))}"


def flush_lag_seconds(metrics_text: str) -> float | None:
    """The largest sample of the flush-lag gauge in Prometheus text, None if it has none."""
    values = []
    for line in metrics_text.splitlines():
        name, _, rest = line.partition(" ")
        if name.split("{", 1)[0] == FLUSH_LAG_METRIC and not line.startswith("#"):
            # A labelled sample may have spaces inside its braces: the value comes after "}".
            value = line.rsplit("}", 1)[1] if "{" in name else rest
            values.append(float(value.split()[0]))
    return max(values) if values else None


def check_flush_lag(metrics_url: str, max_lag: float) -> str:
    try:
        request = urllib.request.Request(metrics_url)
        if token := os.environ.get("TOLLGATE_METRICS_TOKEN"):  # /metrics wants it when set
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise Unhealthy(f"cannot read the flush lag from {metrics_url}: {exc}") from exc
    lag = flush_lag_seconds(text)
    if lag is None:
        raise Unhealthy(f"{metrics_url} exports no {FLUSH_LAG_METRIC}")
    if lag > max_lag:
        raise Unhealthy(f"flush lag {lag:.0f} s is over {max_lag:.0f} s: the flusher is behind")
    return f"flush lag {lag:.1f} s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="healthcheck.py",
                                     description="tollgate's container health checks")
    sub = parser.add_subparsers(dest="check", required=True)
    http = sub.add_parser("http")
    http.add_argument("url")
    http.add_argument("--auth-env", default=None, help="USER_VAR:PASSWORD_VAR for basic auth")
    sub.add_parser("worker")
    lag = sub.add_parser("flush-lag")
    lag.add_argument("metrics_url")
    lag.add_argument("--max-lag", type=float, default=300.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.check == "http":
            message = check_http(args.url, args.auth_env)
        elif args.check == "worker":
            message = check_worker()
        else:
            message = check_flush_lag(args.metrics_url, args.max_lag)
    except Unhealthy as exc:
        print(f"unhealthy: {exc}")
        return 1
    print(f"healthy: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
