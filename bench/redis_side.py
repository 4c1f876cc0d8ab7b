"""The benchmarks' side of Redis: the connection pool, what the server itself spent on a
phase, bulk setup through `Core`, and deleting a run's keys.

Client throughput on a small machine is bounded by the Python client, not by Redis, so a
phase also records Redis's own CPU time and script time per call (INFO cpu/commandstats):
that is what decides throughput once enough API processes drive one Redis.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service.state.clients import HiredisPackingConnection
from service.state.scripts import Script


def connect(url: str, connections: int) -> Redis:
    """The client much as `service.state.clients.state_redis` builds it for the API (hiredis
    command packing), but on redis-py's plain pool with at most `connections` sockets:
    callers keep their concurrency within it, and the blocking pool costs more CPU per call
    and starves waiters unfairly."""
    return Redis.from_url(url, decode_responses=True, max_connections=connections,
                          connection_class=HiredisPackingConnection)


def add_private_redis_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--private-redis", action="store_true",
                        help="start a redis-server of the run's own instead of --redis-url, so "
                             "Redis's CPU counters hold only the benchmark's calls")


async def redis_facts(client: Redis) -> dict[str, Any]:
    server = await client.info("server")
    facts: dict[str, Any] = {"redis_server": server.get("redis_version")}
    try:
        config = await client.config_get("appendonly")
        config.update(await client.config_get("save"))
        facts["redis_persistence"] = (
            f"appendonly={config.get('appendonly')} save={config.get('save') or 'off'!r}"
        )
    except Exception:  # managed Redis often forbids CONFIG; the facts are a courtesy
        facts["redis_persistence"] = "unknown"
    return facts


@dataclass(frozen=True, slots=True)
class ServerCounters:
    """Cumulative counters of the Redis server; subtract two to get one phase's share."""

    script_calls: int
    script_usec: int
    cpu_seconds: float

    @classmethod
    async def read(cls, client: Redis) -> ServerCounters:
        stats = await client.info("commandstats")
        cpu = await client.info("cpu")
        calls = usec = 0
        for name in ("cmdstat_evalsha", "cmdstat_eval"):
            entry = stats.get(name) or {}
            calls += int(entry.get("calls", 0))
            usec += int(entry.get("usec", 0))
        return cls(calls, usec, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))

    def since(self, before: ServerCounters, own_calls: int) -> dict[str, Any]:
        """Per call of this phase. Other clients of the same Redis (tests running beside
        the benchmark) inflate both numbers: `foreign_script_calls` says by how much."""
        calls = self.script_calls - before.script_calls
        divisor = max(own_calls, 1)
        return {
            "script_us_per_call": round((self.script_usec - before.script_usec) / divisor, 2),
            "server_cpu_us_per_call": round(
                (self.cpu_seconds - before.cpu_seconds) * 1e6 / divisor, 2
            ),
            "foreign_script_calls": max(calls - own_calls, 0),
        }


class ScriptRecorder:
    """Stands in for the Redis client so that `Core` builds each call's keys and arguments
    (one place knows them), which `replay` then sends in pipelines: setting up tens of
    thousands of jobs call by call would take longer than the benchmark itself.

    Every call answers a generic success reply, which is all `Core`'s parsers need."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> list[Any]:
        self.calls.append((sha, numkeys, *keys_and_args))
        return ["ok", "recorded", 0, 0, 0]

    async def execute_command(self, *args: Any) -> int:
        """A plain command Core sends beside its scripts (SADD of the buckets in use, ZADD of
        the flusher's due index): recorded as (PLAIN, command, args...)."""
        self.calls.append((PLAIN, *args))
        return 1

    def take(self) -> list[tuple[Any, ...]]:
        calls, self.calls = self.calls, []
        return calls


PLAIN = "<plain command>"  # marks a recorded plain command (never a script's SHA)


async def load_scripts_into(client: Redis, scripts: Sequence[Script]) -> None:
    for script in scripts:
        await client.script_load(script.source)


async def replay(
    client: Redis, calls: Sequence[tuple[Any, ...]], *, batch: int = 500, lanes: int = 8
) -> None:
    """Sends recorded EVALSHA calls in pipelines over `lanes` connections; any reply but
    'ok'/'already' stops the benchmark, since its state would not be what it claims."""

    async def send(chunk: Sequence[tuple[Any, ...]]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for call in chunk:
                if call[0] == PLAIN:
                    pipe.execute_command(*call[1:])
                else:
                    pipe.evalsha(*call)
            replies = await pipe.execute()
        for call, reply in zip(chunk, replies, strict=True):
            if call[0] != PLAIN and reply[0] not in ("ok", "already"):
                raise RuntimeError(f"benchmark setup refused: {reply!r}")

    chunks = [calls[i : i + batch] for i in range(0, len(calls), batch)]
    for start in range(0, len(chunks), lanes):
        await asyncio.gather(*(send(chunk) for chunk in chunks[start : start + lanes]))


async def delete_prefix(client: Redis, prefix: str) -> int:
    """Deletes every `<prefix>:*` key, in batches; never FLUSHDB on a shared Redis."""
    deleted = 0
    batch: list[str] = []
    async for key in client.scan_iter(match=f"{prefix}:*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            deleted += await client.unlink(*batch)
            batch = []
    if batch:
        deleted += await client.unlink(*batch)
    return deleted
