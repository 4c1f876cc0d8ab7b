"""Reads of Redis state for assertions: balances, ledger entries and whole-prefix snapshots."""

from __future__ import annotations

import json
from typing import Any

from service.state.fsm import LIVE
from service.state.store import Core


async def balance(core: Core, user_id: str) -> dict[str, int]:
    record = await core.user_record(user_id)
    return {name: int(record[name]) for name in ("available", "reserved", "spent", "granted")}


async def assert_balanced(core: Core, user_id: str, job_ids: list[str]) -> dict[str, int]:
    """granted = available + reserved + spent, available >= 0, reserved = open holds."""
    money = await balance(core, user_id)
    assert money["granted"] == money["available"] + money["reserved"] + money["spent"], money
    assert money["available"] >= 0, money
    held = 0
    for job_id in job_ids:
        job = await core.job_record(job_id)
        if job.get("owner") == user_id and job["state"] in LIVE:
            held += int(job["cost"])
    assert money["reserved"] == held, (money, held)
    return money


async def ledger(core: Core, user_id: str) -> list[dict[str, Any]]:
    key = core.keys.bucket(core.keys.bucket_of_user(user_id)).ledger
    entries = [json.loads(raw) for raw in await core.client.lrange(key, 0, -1)]
    return [entry for entry in entries if entry["user_id"] == user_id]


async def snapshot(client: Any, prefix: str) -> dict[str, Any]:
    """Every key under the prefix with its type and full contents (no DUMP: it differs by
    encoding, not by meaning). Only whether a key expires is kept, not its falling TTL.
    Not the flusher's due index: a hint Core writes after a script's reply, unawaited, at
    the end of the loop turn (service/state/marks.py; tests/core/test_due_index.py)."""
    state: dict[str, Any] = {}
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        if key.startswith(f"{prefix}:due:"):
            continue
        kind = await client.type(key)
        if kind == "hash":
            value: Any = await client.hgetall(key)
        elif kind == "set":
            value = sorted(await client.smembers(key))
        elif kind == "zset":
            value = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = await client.lrange(key, 0, -1)
        elif kind == "string":
            value = await client.get(key)
        else:
            raise AssertionError(f"unexpected {kind} key {key}")
        state[key] = (kind, value, await client.pttl(key) > 0)
    return state


def money(available: int, reserved: int, spent: int, granted: int) -> dict[str, int]:
    return {"available": available, "reserved": reserved, "spent": spent, "granted": granted}
