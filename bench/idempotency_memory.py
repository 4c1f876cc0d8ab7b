"""Redis memory after create-and-cancel cycles with the longest Idempotency-Key allowed
(issue 10: sixty cycles with 500 KB keys once grew used_memory from 3 MB to 34 MB).

Runs the app in-process on a redis-server of its own (so used_memory is this run's alone) and
SQLite. Baseline: the same cycles without an Idempotency-Key, measured in the same run.

    python bench/idempotency_memory.py --cycles 60
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import redis
from litestar.testing import AsyncTestClient

from bench.stack import private_redis
from service.api.app import create_app
from service.api.auth import issue_token
from service.history.engine import run_migrations
from service.settings import Settings

JOB = {"items": [{"name": "a.png", "content_type": "image/png", "size": 10}]}
SECRET = "bench-secret-" + "x" * 32


async def cycles(client: Any, user: str, count: int, key_of: Any) -> None:
    token = {"Authorization": f"Bearer {issue_token(SECRET, user)}"}
    for n in range(count):
        headers = dict(token)
        if key_of is not None:
            headers["Idempotency-Key"] = key_of(n)
        created = await client.post("/jobs", json=JOB, headers=headers)
        assert created.status_code == 201, created.text
        canceled = await client.post(f"/jobs/{created.json()['id']}/cancel", headers=token)
        assert canceled.status_code == 200, canceled.text


async def measure(url: str, folder: Path, count: int) -> dict[str, int]:
    database = f"sqlite:///{folder}/bench.db"
    run_migrations(database)
    app = create_app(Settings(redis_url=url, queue_redis_url=url, database_url=database,
                              jwt_secret=SECRET, storage_dir=str(folder / "files"),
                              flush_delay=3600))  # keep every record in Redis
    probe = redis.Redis.from_url(url)
    used: dict[str, int] = {}
    async with AsyncTestClient(app=app) as client:
        await client.get("/me", headers={"Authorization": f"Bearer {issue_token(SECRET, 'a')}"})
        used["start"] = int(probe.info("memory")["used_memory"])
        await cycles(client, "bench-plain", count, None)
        used["plain"] = int(probe.info("memory")["used_memory"])
        longest = "K" * 200
        await cycles(client, "bench-keyed", count, lambda n: f"{n:04d}" + longest[4:])
        used["keyed"] = int(probe.info("memory")["used_memory"])
    probe.close()
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=60)
    args = parser.parse_args()
    with private_redis() as redis_url, tempfile.TemporaryDirectory() as folder:
        used = asyncio.run(measure(redis_url, Path(folder), args.cycles))
    plain, keyed = used["plain"] - used["start"], used["keyed"] - used["plain"]
    print(f"used_memory at start: {used['start']:,} B")
    print(f"{args.cycles} cycles without a key: +{plain:,} B; then {args.cycles} cycles with a "
          f"200-character key: +{keyed:,} B (used_memory {used['keyed']:,} B)")
    print(f"ratio keyed/plain growth: {keyed / plain:.2f}" if plain > 0 else "plain grew 0 B")


if __name__ == "__main__":
    main()
