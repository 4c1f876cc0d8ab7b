"""compose.yaml and the README stay in step with the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from service.cli import build_parser
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_compose_sets_only_settings_that_exist() -> None:
    env = compose()["x-tollgate-env"]
    known = {f"TOLLGATE_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, set(env) - known


def test_compose_runs_the_parts_the_product_needs() -> None:
    services = compose()["services"]
    assert {"redis", "postgres", "minio", "api", "worker", "flusher", "rq-dashboard"} <= set(
        services)
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "noeviction" in redis_command
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for name in ("api", "worker", "flusher", "migrate"):
        command = services[name]["command"]
        assert command[0] == "tollgate" and command[1] in subcommands, name


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"TOLLGATE_[A-Z0-9_]+", readme))
    for name in Settings.model_fields:
        variable = f"TOLLGATE_{name.upper()}"
        s3_short = variable.startswith("TOLLGATE_S3_") and f"_{variable.split('_S3')[1][1:]}"
        assert variable in documented or (s3_short and s3_short in readme), variable


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m pytest" in readme and "python3 -m pytest" in ci
