"""Builds the state Redis client (standalone, Cluster or embedded fakeredis) and RQ's."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import fakeredis
import hiredis
import redis
from redis.asyncio import BlockingConnectionPool, Connection
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from service.settings import Settings

log = logging.getLogger(__name__)

CLUSTER_SCHEME = "redis+cluster://"

# The embedded default: one in-process server shared by the API, the worker loop and the
# flusher of `tollgate dev`. Separate FakeServers never see each other's data.
_EMBEDDED: fakeredis.FakeServer | None = None


def embedded_server() -> fakeredis.FakeServer:
    global _EMBEDDED
    if _EMBEDDED is None:
        _EMBEDDED = fakeredis.FakeServer()
    return _EMBEDDED


_HIREDIS_TYPES = frozenset((str, bytes, int))


class HiredisPackingConnection(Connection):
    """Packs commands with hiredis's C encoder: about 1.6 µs instead of 12 for a script call
    of 20 arguments. Only for what both encode alike (str, bytes, int); anything else, and
    a first argument holding several words ("CONFIG GET"), takes redis-py's own path."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str) and " " not in first and _HIREDIS_TYPES.issuperset(
                map(type, args)):
            return [hiredis.pack_command(args)]
        return super().pack_command(*args)


# Connections a pool keeps beyond the gate: WATCH transactions and a Cluster's topology
# refresh take a connection outside a gated call.
POOL_HEADROOM = 8
# Set while a task is inside a gated call: a call the client makes from inside one (a
# Cluster pipeline retrying a redirected command) must not wait for a second slot.
_INSIDE_GATE: contextvars.ContextVar[bool] = contextvars.ContextVar("tollgate_inside_gate",
                                                                   default=False)


class Gate:
    """At most `limit` calls in flight on one client; the rest wait their turn.

    redis-py's plain pool (fakeredis's, and each node's pool in a RedisCluster client) raises
    MaxConnectionsError at once when it is full, so a flusher that gathers hundreds of
    scripts fails every pass there, while the same code passes on a standalone Redis with a
    blocking pool. The gate sits in front of every command and pipeline of the client, so
    no caller has to count: a burst waits instead of failing. A pipeline counts as one call:
    it holds at most one connection per node."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._semaphore: asyncio.Semaphore | None = None
        self.waited = 0  # calls that found the gate full (tests, and a hint for tuning)

    async def run(self, call: Any) -> Any:
        if _INSIDE_GATE.get():
            return await call()
        if self._semaphore is None:  # made on first use: bound to the loop that uses it
            self._semaphore = asyncio.Semaphore(self.limit)
        if self._semaphore.locked():
            self.waited += 1
        async with self._semaphore:
            token = _INSIDE_GATE.set(True)
            try:
                return await call()
            finally:
                _INSIDE_GATE.reset(token)

    @property
    def in_flight(self) -> int:
        return 0 if self._semaphore is None else self.limit - self._semaphore._value


class GatedPipeline(Pipeline):
    gate: Gate

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        result: list[Any] = await self.gate.run(lambda: super(GatedPipeline, self).execute(
            raise_on_error))
        return result


class GatedClusterPipeline(ClusterPipeline):
    gate: Gate

    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list[Any]:
        result: list[Any] = await self.gate.run(lambda: super(GatedClusterPipeline, self).execute(
            raise_on_error, allow_redirections))
        return result


class GatedFakeRedis(fakeredis.FakeAsyncRedis):
    """The embedded server's client, its calls bounded by a Gate below its pool's size."""

    gate: Gate

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        return await self.gate.run(lambda: super(  # type: ignore[no-untyped-call]
            GatedFakeRedis, self).execute_command(*args, **options))

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = GatedPipeline(self.connection_pool, self.response_callbacks, transaction,
                             shard_hint)
        pipe.gate = self.gate
        return pipe


class GatedRedisCluster(AsyncRedisCluster):
    """A Cluster client whose calls are bounded by a Gate: each node's pool holds at most
    the gate's limit plus POOL_HEADROOM connections, so it never runs out."""

    gate: Gate

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await self.gate.run(lambda: super(GatedRedisCluster, self).execute_command(
            *args, **kwargs))

    def pipeline(self, transaction: Any | None = None,
                 shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:  # refused as the base class refuses it
            return super().pipeline(transaction, shard_hint)
        pipe = GatedClusterPipeline(self, transaction)  # type: ignore[abstract]
        pipe.gate = self.gate
        return pipe


def state_redis(settings: Settings) -> Any:
    """An asyncio client with decoded replies; `Any` because Redis and RedisCluster differ.

    Every kind waits when its connections are all in use: a blocking pool on a standalone
    Redis, a Gate of `redis_max_connections` calls in front of a Cluster's per-node pools
    and of the embedded server's pool."""
    url = settings.redis_url
    limit = settings.redis_max_connections
    if url is None:
        embedded = GatedFakeRedis(server=embedded_server(), decode_responses=True,
                                  max_connections=limit + POOL_HEADROOM)
        embedded.gate = Gate(limit)
        return embedded
    if url.startswith(CLUSTER_SCHEME):
        cluster: GatedRedisCluster = GatedRedisCluster.from_url(  # type: ignore[assignment]
            "redis://" + url.removeprefix(CLUSTER_SCHEME),
            decode_responses=True,
            max_connections=limit + POOL_HEADROOM,
        )
        cluster.gate = Gate(limit)
        return cluster
    # Blocking: a burst beyond the pool waits for a connection instead of failing at once
    # with "Too many connections" (a 500 to the client).
    pool = BlockingConnectionPool.from_url(
        url, decode_responses=True, max_connections=limit, timeout=5,
        connection_class=HiredisPackingConnection,
    )
    return AsyncRedis.from_pool(pool)  # the client owns the pool and closes it


def is_standalone(client: Any) -> bool:
    """A real, single Redis server: the one kind of client worth auto-pipelining."""
    return isinstance(client, AsyncRedis) and not isinstance(client, fakeredis.FakeAsyncRedis)


# RQ's connection, named here so nothing outside service.state imports redis.
QueueConnection = redis.Redis
# Whatever a Redis call raises (named here for the same reason).
RedisError = redis.exceptions.RedisError
# What a Redis call raises while the server is away: a ConnectionError (BusyLoadingError
# too, while Redis starts) or a timeout. The API answers them with a 503.
# A Cluster mid-failover answers CLUSTERDOWN or TRYAGAIN, a topology refresh that reaches no
# node or finds a slot uncovered raises errors outside RedisError, and a pool that could not
# give a connection raises MaxConnectionsError: all transient, all a 503.
UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
    redis.exceptions.MaxConnectionsError, redis.exceptions.RedisClusterUnreachableError,
    redis.exceptions.SlotNotCoveredError,
)


def _queue_url(settings: Settings) -> str | None:
    """RQ's Redis URL: standalone only (RQ has no Cluster support); None: the embedded one."""
    url = settings.queue_redis_url or settings.redis_url
    if url is not None and url.startswith(CLUSTER_SCHEME):
        raise ValueError(
            "RQ cannot use Redis Cluster: set TOLLGATE_QUEUE_REDIS_URL to a standalone Redis"
        )
    return url


def queue_redis(settings: Settings) -> QueueConnection:
    """RQ's connection, raw bytes replies."""
    url = _queue_url(settings)
    return fakeredis.FakeRedis(server=embedded_server()) if url is None else \
        redis.Redis.from_url(url)


def queue_redis_async(settings: Settings) -> Any:
    """An asyncio client on RQ's Redis, one connection: the dispatcher's waits and reads of
    the queues' depths, without a thread hop each (RQ itself stays synchronous)."""
    url = _queue_url(settings)
    if url is None:
        return fakeredis.FakeAsyncRedis(server=embedded_server())
    # One connection, waited for (a pool that fails when full would fail a second caller).
    return AsyncRedis.from_pool(BlockingConnectionPool.from_url(url, max_connections=1))


async def warn_if_evicting(client: Any) -> None:
    """Eviction would silently drop holds and dedup records: say so loudly at start-up."""
    try:
        config = await client.config_get("maxmemory-policy")
    except Exception:  # fakeredis and managed Redis may refuse CONFIG
        return
    values = config.values() if isinstance(config, dict) else []
    for value in values:
        policy = value if isinstance(value, str) else next(iter(value.values()), "")
        if policy and policy != "noeviction":
            log.warning("Redis maxmemory-policy is %r; tollgate needs 'noeviction'", policy)
