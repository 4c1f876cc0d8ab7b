"""AutoPipeline on a real Redis: concurrent commands share pipelines, yet each caller gets
exactly its own reply or its own error; and the hiredis command packer matches redis-py's."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError

from service.state.autopipeline import AutoPipeline
from service.state.clients import HiredisPackingConnection


@pytest.fixture
async def pipelined(real_redis: Any) -> AutoPipeline:
    return AutoPipeline(real_redis)


async def test_concurrent_commands_share_pipelines_and_get_their_own_replies(
    pipelined: AutoPipeline, key_prefix: str
) -> None:
    keys = [f"{key_prefix}:n:{i}" for i in range(300)]
    replies = await asyncio.gather(*(pipelined.execute_command("INCRBY", key, i)
                                     for i, key in enumerate(keys)))
    assert replies == list(range(300))
    assert pipelined.commands_sent == 300
    assert pipelined.batches_sent == 2  # one loop turn, split at MAX_BATCH (256)


async def test_an_error_reaches_only_the_caller_whose_command_failed(
    pipelined: AutoPipeline, real_redis: Any, key_prefix: str
) -> None:
    await real_redis.set(f"{key_prefix}:s", "text")
    ok_before, wrong_type, no_script, ok_after = await asyncio.gather(
        pipelined.execute_command("INCR", f"{key_prefix}:a"),
        pipelined.hgetall(f"{key_prefix}:s"),
        pipelined.evalsha("0" * 40, 0),
        pipelined.get(f"{key_prefix}:s"),
        return_exceptions=True,
    )
    assert pipelined.batches_sent == 1
    assert ok_before == 1 and ok_after == "text"
    assert isinstance(wrong_type, ResponseError) and "WRONGTYPE" in str(wrong_type)
    assert isinstance(no_script, NoScriptError)


async def test_replies_keep_redis_py_parsing(pipelined: AutoPipeline, real_redis: Any,
                                            key_prefix: str) -> None:
    await real_redis.hset(f"{key_prefix}:h", mapping={"a": "1", "b": "2"})
    record, alone = await asyncio.gather(pipelined.hgetall(f"{key_prefix}:h"),
                                         pipelined.hgetall(f"{key_prefix}:missing"))
    assert record == {"a": "1", "b": "2"} and alone == {}
    assert await pipelined.hgetall(f"{key_prefix}:h") == record  # a batch of one


async def test_a_cancelled_caller_does_not_disturb_the_rest_of_its_batch(
    pipelined: AutoPipeline, key_prefix: str
) -> None:
    first = asyncio.ensure_future(pipelined.execute_command("INCR", f"{key_prefix}:c"))
    second = asyncio.ensure_future(pipelined.execute_command("INCR", f"{key_prefix}:c"))
    await asyncio.sleep(0)  # both commands are now queued in one batch
    first.cancel()
    assert await second in (1, 2)
    with pytest.raises(asyncio.CancelledError):
        await first
    # The cancelled command was sent all the same: cancelling cannot unsend it.
    assert await pipelined.get(f"{key_prefix}:c") == "2"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_connection_failure_reaches_every_caller_of_the_batch() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{_closed_port()}/0", decode_responses=True)
    pipelined = AutoPipeline(client)
    results = await asyncio.gather(*(pipelined.get(f"k{i}") for i in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    single = await asyncio.gather(pipelined.get("k"), return_exceptions=True)
    assert isinstance(single[0], RedisConnectionError)
    await client.aclose()


PACKED_ALIKE: list[tuple[Any, ...]] = [
    ("EVALSHA", "a" * 40, 2, "tg:{7}:job:01J", "tg:{7}:user:ann", "item", 3, -1, 0,
     "jobs/x/out/3", 1_800_000_000_000, "naïve ✓", b"\x00\xffraw"),
    ("GET", ""),
    ("SET", "k", 2**70),
]


@pytest.mark.parametrize("args", PACKED_ALIKE)
def test_hiredis_packing_matches_redis_py(args: tuple[Any, ...]) -> None:
    ours, theirs = HiredisPackingConnection(), Connection()
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))


@pytest.mark.parametrize("args", [("SET", "k", 1.5), ("CONFIG GET", "maxmemory")])
def test_what_hiredis_would_encode_differently_takes_redis_py_path(
    args: tuple[Any, ...]
) -> None:
    ours, theirs = HiredisPackingConnection(), Connection()
    assert ours.pack_command(*args) == theirs.pack_command(*args)


def test_booleans_are_refused_as_redis_py_refuses_them() -> None:
    with pytest.raises(DataError):
        HiredisPackingConnection().pack_command("SET", "k", True)


async def test_the_state_client_packs_with_hiredis(redis_url: str) -> None:
    from service.settings import Settings
    from service.state.clients import state_redis

    client = state_redis(Settings(redis_url=redis_url))
    pool = client.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    assert pool.connection_class is HiredisPackingConnection
    assert await client.ping() is True
    await client.aclose()
