"""The `tollgate` command's own subcommands: token, migrate, inspect, audit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
import sqlalchemy

from service.cli.main import parse_ttl
from service.state.keys import KeySpace
from service.state.plans import PLANS
from service.state.store import Core

ROOT = Path(__file__).resolve().parents[2]
SECRET = "cli-secret-" + "z" * 32


def tollgate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    return subprocess.run([sys.executable, "-m", "service.cli.main", *args], cwd=ROOT,
                          env={**base, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=60)


def test_token_is_signed_with_the_secret_and_carries_the_role() -> None:
    done = tollgate("token", "alice", "--admin", "--ttl", "2h", TOLLGATE_JWT_SECRET=SECRET)
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["role"] == "admin"
    assert claims["exp"] - claims["iat"] == 7200


def test_token_without_a_secret_says_what_is_missing() -> None:
    done = tollgate("token", "alice")
    assert done.returncode != 0 and "TOLLGATE_JWT_SECRET" in done.stderr


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("30m", 1800), ("1h", 3600),
                                                ("7d", 604800)])
def test_ttl_parsing(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    done = tollgate("migrate", TOLLGATE_DATABASE_URL=url)
    assert done.returncode == 0, done.stderr
    tables = sqlalchemy.inspect(sqlalchemy.create_engine(url)).get_table_names()
    assert {"users", "rules", "jobs_log", "credit_ledger"} <= set(tables)


async def test_inspect_shows_a_users_and_a_jobs_keys(real_redis: Any, redis_url: str,
                                                     key_prefix: str) -> None:
    core = Core(real_redis, KeySpace(key_prefix, 16))
    await core.ensure_user("ann", PLANS["free"], 10)
    job_id = core.keys.new_job_id("ann")
    await core.reserve(job_id=job_id, user_id="ann", total=2, price=1, hold_ttl_ms=60_000,
                       meta_json="[]")
    env = {"TOLLGATE_REDIS_URL": redis_url, "TOLLGATE_KEY_PREFIX": key_prefix,
           "TOLLGATE_BUCKETS": "16"}
    user = tollgate("inspect", "user", "ann", **env)
    assert user.returncode == 0, user.stderr
    report = json.loads(user.stdout)
    assert report[core.keys.user("ann").base]["reserved"] == "2"
    assert report[core.keys.user("ann").active] == [job_id]
    job = json.loads(tollgate("inspect", "job", job_id, **env).stdout)
    assert job[core.job_keys(job_id).base]["state"] == "created"
    assert job["indexes"]["holds"] is not None and job["indexes"]["flush"] is None


async def test_audit_exits_1_on_a_difference_and_0_without(
        real_redis: Any, redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    from service.history.engine import run_migrations

    database = f"sqlite:///{tmp_path}/audit.db"
    run_migrations(database)
    engine = sqlalchemy.create_engine(database)
    with engine.begin() as connection:  # SQL first, as provisioning does
        connection.execute(sqlalchemy.text(
            "INSERT INTO users (id, plan, created_at) VALUES ('ann', 'free', '2026-01-01')"))
    engine.dispose()
    core = Core(real_redis, KeySpace(key_prefix, 16))
    await core.ensure_user("ann", PLANS["free"], 10)  # its signup entry waits in Redis
    await core.reserve(job_id=core.keys.new_job_id("ann"), user_id="ann", total=2, price=1,
                       hold_ttl_ms=60_000, meta_json="[]")
    env = {"TOLLGATE_REDIS_URL": redis_url, "TOLLGATE_KEY_PREFIX": key_prefix,
           "TOLLGATE_BUCKETS": "16", "TOLLGATE_DATABASE_URL": database}
    clean = tollgate("audit", **env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "1 users checked, 0 differences" in clean.stdout

    await real_redis.hincrby(core.keys.user("ann").base, "spent", 3)
    found = tollgate("audit", "--user", "ann", **env)
    assert found.returncode == 1, found.stdout + found.stderr
    assert "DIFFERENCE ann: spent vs -SUM(charges): redis 3, sql 0" in found.stdout
