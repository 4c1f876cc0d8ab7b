"""The Dockerfile (read by dockerfile-parse), its requirements helper and .dockerignore,
checked without a Docker engine."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.deploy.artefacts import (
    HEALTHCHECK_IN_IMAGE,
    ROOT,
    dockerfile_stages,
    exec_form,
    healthcheck_module,
    healthcheck_script_args,
    index_of,
    tollgate_parser,
)


def test_stages_are_read_with_arguments_and_continuations(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "ARG BASE=python:3.11-slim\n"
        "FROM ${BASE} AS one\n"
        "# a comment\n"
        "RUN a \\\n    && b\n"
        "FROM one AS two\n"
        "USER 1:1\n")
    assert dockerfile_stages(dockerfile) == {
        "one": [("FROM", "python:3.11-slim"), ("RUN", "a && b")],
        "two": [("FROM", "one"), ("USER", "1:1")],
    }


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
