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


# A newcomer's first hour (issue 18): each start-up friction ends in one clear line.

def one_line(text: str) -> str:
    """The only line of `text`, which must not be a traceback."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_version_is_the_installed_one() -> None:
    from importlib.metadata import version

    done = tollgate("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"tollgate {version('tollgate')}"


def test_every_option_has_help_and_shows_its_default() -> None:
    import argparse

    from service.cli.main import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions
                    if isinstance(action, argparse._SubParsersAction))
    checked = 0
    for name, sub in commands.choices.items():
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, (name, action.dest)
            checked += 1
            if action.default is not None and not isinstance(action.default, bool) \
                    and action.option_strings:
                shown = f"(default: {action.default})"
                assert shown in " ".join(text.split()), (name, action.dest, text)
    assert checked >= 20
    for name, option, default in (("dev", "--port", "8000"), ("api", "--host", "127.0.0.1"),
                                  ("demo", "--user", "demo-user")):
        help_text = " ".join(tollgate(name, "--help").stdout.split())
        assert option in help_text and f"(default: {default})" in help_text, help_text


def test_api_hands_out_urls_on_its_own_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.cli.serve
    from service.cli.main import main
    from service.settings import get_settings

    served: list[str] = []
    monkeypatch.setattr(service.cli.serve, "serve",
                        lambda *_, **__: served.append(get_settings().public_url))
    for name in [name for name in os.environ if name.startswith("TOLLGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TOLLGATE_JWT_SECRET", SECRET)
    get_settings.cache_clear()
    try:
        assert main(["api", "--port", "8808", "--server", "uvicorn"]) == 0
        monkeypatch.delenv("TOLLGATE_PUBLIC_URL")  # set by that run for its processes
        get_settings.cache_clear()
        assert main(["api", "--host", "0.0.0.0", "--port", "8809"]) == 0
        monkeypatch.setenv("TOLLGATE_PUBLIC_URL", "https://api.example.com")
        get_settings.cache_clear()
        assert main(["api", "--port", "8810"]) == 0  # the variable, when set, wins
    finally:
        get_settings.cache_clear()
    assert served == ["http://127.0.0.1:8808", "http://127.0.0.1:8809",
                      "https://api.example.com"]


def test_dev_refuses_a_taken_port_before_printing_anything(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "service.cli.main", "dev", "--port",
                               str(port)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, env={**{k: v for k, v in os.environ.items()
                                                 if not k.startswith("TOLLGATE_")},
                                              "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    line = one_line(done.stderr)
    assert f"port {port}" in line and "--port" in line
    assert not (tmp_path / "tollgate.db").exists()  # it stopped before doing anything


@pytest.mark.parametrize("args", [("flusher", "--once"), ("worker", "--burst"),
                                  ("inspect", "user", "ann"), ("api",)])
def test_an_unreachable_redis_is_one_line(args: tuple[str, ...]) -> None:
    from tests.conftest import free_port

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    done = tollgate(*args, TOLLGATE_REDIS_URL=url, TOLLGATE_JWT_SECRET=SECRET,
                    TOLLGATE_DATABASE_URL="sqlite:///:memory:")
    assert done.returncode != 0
    line = one_line(done.stderr)
    assert "cannot reach Redis at 127.0.0.1:" in line and "TOLLGATE_REDIS_URL" in line, line
    assert "hunter2" not in line


NEGATIVE_MODELS = """
[models.thumbnail]
processor = "workers.processors.thumbnail:make_thumbnails"
price_per_item = 1
[models.negative]
processor = "negative:Negative"
price_per_item = 2
[models.edges]
processor = "workers.processors.torch_batch:EdgeMaps"
price_per_item = 3
"""


def test_a_worker_whose_processor_does_not_import_says_how_to_fix_it(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(NEGATIVE_MODELS)
    done = tollgate("worker", "--model", "negative", "--burst", TOLLGATE_MODELS=str(models))
    assert done.returncode != 0
    line = one_line(done.stderr)
    assert "'negative'" in line and "PYTHONPATH" in line and "install" in line, line

    # The module on PYTHONPATH: the same worker starts (and, --burst, ends at once).
    (tmp_path / "negative.py").write_text(
        "class Negative:\n    def __call__(self, items):\n        return []\n")
    done = tollgate("worker", "--model", "negative", "--burst", TOLLGATE_MODELS=str(models),
                    PYTHONPATH=f"{ROOT}:{tmp_path}")
    assert done.returncode == 0, done.stderr


def test_a_missing_torch_names_the_gpu_extra(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(NEGATIVE_MODELS)
    # A torch that is not there, whatever this machine has installed.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    done = tollgate("worker", "--model", "edges", "--burst", TOLLGATE_MODELS=str(models),
                    PYTHONPATH=f"{tmp_path}:{ROOT}")
    assert done.returncode != 0
    line = one_line(done.stderr)
    assert "torch" in line and "'.[gpu]'" in line, line


def test_token_without_a_secret_points_at_devs_secret_line() -> None:
    done = tollgate("token", "alice")
    assert done.returncode != 0
    assert "secret:" in one_line(done.stderr)


async def test_a_model_that_cannot_run_is_reported_and_refused(tmp_path: Path) -> None:
    """Under `tollgate dev` a model whose processor does not load is marked unavailable:
    GET /models and a waiting job's view say why, POST /jobs for it is 503."""
    import fakeredis
    import httpx

    import service.state.clients as clients
    from service.api.auth import issue_token
    from service.history.engine import run_migrations
    from service.models import load_models
    from service.settings import Settings
    from tests.api.conftest import ServerThread
    from tests.conftest import free_port

    clients._EMBEDDED = fakeredis.FakeServer()
    models = tmp_path / "models.toml"
    models.write_text(NEGATIVE_MODELS)
    port = free_port()
    settings = Settings(database_url=f"sqlite:///{tmp_path}/t.db", jwt_secret=SECRET,
                        public_url=f"http://127.0.0.1:{port}", models=str(models),
                        storage_dir=str(tmp_path / "files"))
    run_migrations(settings.database_url)
    png = {"name": "a.png", "content_type": "image/png", "size": 100}
    auth = {"Authorization": f"Bearer {issue_token(SECRET, 'ann', ttl_s=600)}"}
    with ServerThread(settings, port):
        async with httpx.AsyncClient(base_url=settings.public_url, headers=auth) as client:
            waiting = await client.post("/jobs", json={"items": [png], "model": "negative"})
            assert waiting.status_code == 201, waiting.text
            listed = (await client.get("/models")).json()["items"]
            assert all(model["available"] for model in listed)
            assert "model_unavailable" not in (await client.get(
                f"/jobs/{waiting.json()['id']}")).json()

            reason = "model 'negative': processor module 'negative' cannot be imported"
            load_models(settings).mark_unavailable("negative", reason)
            listed = {m["name"]: m for m in (await client.get("/models")).json()["items"]}
            assert listed["negative"]["available"] is False
            assert listed["negative"]["unavailable_reason"] == reason
            assert listed["thumbnail"]["available"] is True
            assert "unavailable_reason" not in listed["thumbnail"]
            view = (await client.get(f"/jobs/{waiting.json()['id']}")).json()
            assert view["model_unavailable"] == reason
            refused = await client.post("/jobs", json={"items": [png], "model": "negative"})
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "model_unavailable"
            assert refused.json()["detail"] == reason
            await client.post(f"/jobs/{waiting.json()['id']}/cancel")
            other = await client.post("/jobs", json={"items": [png]})
            assert other.status_code == 201, other.text


def test_a_flusher_without_the_apis_address_warns_at_start(tmp_path: Path, redis_url: str
                                                           ) -> None:
    """Its batches' callback URLs are signed with its own TOLLGATE_INTERNAL_URL, else
    TOLLGATE_PUBLIC_URL (docs/scheduling.md): started with neither, it says so."""
    env = {"TOLLGATE_REDIS_URL": redis_url, "TOLLGATE_JWT_SECRET": SECRET,
           "TOLLGATE_KEY_PREFIX": f"tgcli{os.getpid()}",
           "TOLLGATE_DATABASE_URL": f"sqlite:///{tmp_path}/tollgate.db"}
    assert tollgate("migrate", **env).returncode == 0
    bare = tollgate("flusher", "--once", **env)
    assert bare.returncode == 0, bare.stderr
    warned = [line for line in bare.stderr.splitlines() if "TOLLGATE_PUBLIC_URL" in line]
    assert len(warned) == 1 and "WARNING" in warned[0] and "127.0.0.1:8000" in warned[0], \
        bare.stderr
    given = tollgate("flusher", "--once", TOLLGATE_PUBLIC_URL="http://api.internal:8000", **env)
    assert given.returncode == 0 and "TOLLGATE_PUBLIC_URL" not in given.stderr, given.stderr
