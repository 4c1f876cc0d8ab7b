"""Fixtures for the atomic core: one `Core` per backend, and many-connection clients for races.

The shared fixtures of tests/conftest.py decide whether a backend is there (skip, or fail
under TOLLGATE_REQUIRE_SERVICES=1); these only wrap them in a `Core` and clean up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from service.state.clients import HiredisPackingConnection
from service.state.keys import KeySpace
from service.state.store import Core

BUCKETS = 16
RACE_CONNECTIONS = 50


_COMMAND_TABLE: dict[str, Any] = {}


def cluster_client(cluster_url: str, **kwargs: Any) -> RedisCluster:
    client = RedisCluster.from_url(
        "redis://" + cluster_url.removeprefix("redis+cluster://"), decode_responses=True, **kwargs
    )
    # Every new RedisCluster parses the server's whole COMMAND table (~10k reply elements),
    # which cost more than most tests themselves; the table cannot change within a session.
    parser = client.commands_parser
    fetch_table = parser.initialize

    async def initialize(node: Any = None) -> None:
        if not _COMMAND_TABLE:
            await fetch_table(node)
            _COMMAND_TABLE.update(parser.commands)
            return
        if node:
            parser.node = node
        parser.commands = dict(_COMMAND_TABLE)

    parser.initialize = initialize  # type: ignore[method-assign]
    return client


async def delete_prefix(client: Any, prefix: str) -> None:
    # RedisCluster.scan_iter walks every primary, so this cleans the cluster too.
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.delete(key)


@pytest.fixture
async def cluster_redis(cluster_url: str, key_prefix: str) -> AsyncIterator[RedisCluster]:
    client = cluster_client(cluster_url)
    yield client
    await delete_prefix(client, key_prefix)
    await client.aclose()


@pytest.fixture(params=["fake", "real", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def core(backend: str, request: pytest.FixtureRequest, key_prefix: str) -> Core:
    """A Core on fakeredis, the shared real Redis, or the session's 3-node cluster."""
    fixture = {"fake": "fake_redis", "real": "real_redis", "cluster": "cluster_redis"}[backend]
    client = request.getfixturevalue(fixture)
    return Core(client, KeySpace(key_prefix, BUCKETS))


@pytest.fixture(params=["real", "pipelined", "cluster"])
def server_backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def server_core(server_backend: str, request: pytest.FixtureRequest, key_prefix: str) -> Core:
    """A Core on a real server only (standalone, standalone auto-pipelined as the API runs
    it, or cluster): races. (SCRIPT FLUSH runs on a Redis of its own: test_script_flush.)"""
    fixture = {"real": "real_redis", "pipelined": "real_redis",
               "cluster": "cluster_redis"}[server_backend]
    return Core(request.getfixturevalue(fixture), KeySpace(key_prefix, BUCKETS),
                autopipeline=server_backend == "pipelined")


@pytest.fixture
async def race_core(
    server_backend: str, request: pytest.FixtureRequest, key_prefix: str
) -> AsyncIterator[Core]:
    """A Core whose client spreads concurrent calls over RACE_CONNECTIONS connections, each
    named after the key prefix so a test can count them in CLIENT LIST."""
    client: Any
    standalone = server_backend in ("real", "pipelined")
    if standalone:
        url = request.getfixturevalue("redis_url")
        pool = BlockingConnectionPool.from_url(
            url, decode_responses=True, max_connections=RACE_CONNECTIONS, timeout=30,
            client_name=key_prefix, connection_class=HiredisPackingConnection,
        )
        client = Redis(connection_pool=pool)
    else:
        client = cluster_client(
            request.getfixturevalue("cluster_url"), max_connections=RACE_CONNECTIONS,
            client_name=key_prefix,
        )
    yield Core(client, KeySpace(key_prefix, BUCKETS),
               autopipeline=server_backend == "pipelined")
    await delete_prefix(client, key_prefix)
    await client.aclose()
    if standalone:
        await pool.aclose()


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Pins `service.state.base.now_ms`, the clock of Core's calls; tests move time by
    assigning clock[0]."""
    clock = [1_800_000_000_000]
    monkeypatch.setattr("service.state.base.now_ms", lambda: clock[0])
    yield clock
