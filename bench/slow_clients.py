"""One client holding connections: a normal user's GET /me, alone and beside the attack.

    python -m bench.slow_clients [--connections 2000] [--seconds 10] [--quick]

The attack (issue 23, item 2) comes from one address, 127.0.0.2, with `--connections`
connections kept open all the time (each one closed by the server is opened again at once):
a third idle (connected, nothing sent), a third declaring `Content-Length: 100000` on the
worker callback with no valid token and sending one byte, and a third doing the same on
POST /jobs with a valid user token (a body the app waits for up to 30 s). Meanwhile a normal
user at 127.0.0.1 sends GET /me on a fresh connection every 50 ms (10 s timeout; a timeout
counts as 10 s and an error).

Two `tollgate api` processes on one stack, each attacked in turn:
- "before": granian's default 1,024 connection slots and no cap per client
  (TOLLGATE_MAX_CONNECTIONS=1024, TOLLGATE_CLIENT_MAX_IN_FLIGHT=0), as main served it;
- "after": the defaults (16,384 slots, 128 requests in flight per client).
Rows: p95 of GET /me with no attack (baseline) and under attack; ratio = baseline p95 /
attack p95. `refused_429` counts attack requests answered 429 too_many_in_flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx

from bench.harness import Proc, Result, Row, parser, percentile, run, stack, users

ATTACKER = "127.0.0.2"
TIMEOUT_S = 10.0
JOB_ID = "01jabcdefghjkmnpqrstvwxyz0-3"


def _head(kind: str, token: str) -> bytes:
    if kind == "callback":
        return (f"POST /jobs/{JOB_ID}/callback HTTP/1.1\r\nHost: t\r\n"
                "Content-Type: application/json\r\nAuthorization: Bearer nope\r\n"
                "Content-Length: 100000\r\n\r\n{").encode()
    return ("POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: 100000\r\n\r\n{{").encode()


async def attacker(port: int, kind: str, token: str, stop: asyncio.Event,
                   seen: dict[str, int]) -> None:
    """One connection slot, held for as long as the attack lasts."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(ATTACKER, 0))
        except OSError:
            seen["connect_errors"] += 1
            await asyncio.sleep(0.1)
            continue
        seen["opened"] += 1
        try:
            if kind != "idle":
                writer.write(_head(kind, token))
                await writer.drain()
            answer = await reader.read(65536)
            if answer.startswith(b"HTTP/1.1 "):
                status = answer[9:12].decode()
                seen[f"status_{status}"] = seen.get(f"status_{status}", 0) + 1
                if b"too_many_in_flight" in answer:
                    seen["refused_429"] += 1
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def sample(url: str, token: str, seconds: float) -> dict[str, Any]:
    """GET /me on a fresh connection every 50 ms for `seconds`: its latencies."""
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        try:
            async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S) as http:
                ok = (await http.get("/me", headers={"Authorization": f"Bearer {token}"})
                      ).status_code == 200
        except httpx.HTTPError:
            ok = False
        latencies.append((time.perf_counter() - began) * 1000)
        errors += not ok
        await asyncio.sleep(0.05)
    return {"requests": len(latencies), "errors": errors,
            "p50_ms": round(percentile(latencies, 0.5), 1),
            "p95_ms": round(percentile(latencies, 0.95), 1)}


async def attacked(api: Proc, token: str, attack_token: str, connections: int,
                   seconds: float) -> dict[str, Any]:
    stop = asyncio.Event()
    seen = {"opened": 0, "connect_errors": 0, "refused_429": 0}
    kinds = ("idle", "callback", "jobs")
    tasks = [asyncio.create_task(attacker(api.port, kinds[i % 3], attack_token, stop, seen))
             for i in range(connections)]
    await asyncio.sleep(2.0)  # every slot opened
    figures = await sample(api.url, token, seconds)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {**figures, **seen}


async def main(connections: int, seconds: float, quick: bool) -> list[Result]:
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with stack() as bench:
        apis = {"before": bench.api(TOLLGATE_MAX_CONNECTIONS="1024",
                                    TOLLGATE_CLIENT_MAX_IN_FLIGHT="0"),
                "after": bench.api()}
        token, attack_token = await users(bench, apis["after"], ["normal", "attacker"])
        for label, api in apis.items():
            quiet = await sample(api.url, token, seconds / 2)
            loud = await attacked(api, token, attack_token, connections, seconds)
            await asyncio.sleep(1.0)
            results[label] = {"quiet": quiet, "attack": loud}
            print(label, results[label], flush=True)

    def row(label: str) -> Row:
        quiet, loud = results[label]["quiet"], results[label]["attack"]
        return Row(f"{label}: GET /me p95 under {connections} attacking connections",
                   loud["p95_ms"], round(quiet["p95_ms"] / max(loud["p95_ms"], 0.001), 3),
                   None, {**{f"quiet_{k}": v for k, v in quiet.items()}, **loud})

    base = results["after"]["quiet"]
    return [Result("slow_clients", "A normal user's GET /me beside one client holding "
                   f"{connections} connections", "ms p95",
                   Row("no attack (after)", base["p95_ms"], 1.0, None, base),
                   [row("before"), row("after")],
                   {"connections": connections, "seconds": seconds}, quick)]


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--connections", type=int, default=2000)
    cli.add_argument("--seconds", type=float, default=10.0)
    args = cli.parse_args()
    connections, seconds = (60, 1.0) if args.quick else (args.connections, args.seconds)
    run(main(connections, seconds, args.quick), args)
