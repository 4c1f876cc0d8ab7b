"""compose.yaml and the docs stay in step with the code.

The compose stack itself (schema, healthchecks, profiles, the Dockerfile, monitoring) is
checked in tests/deploy/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

# Settings that issue 13 names, which compose.yaml already sets ahead of the code that
# reads them: drop a name from here once Settings has it.
PENDING_SETTINGS: set[str] = set()


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_compose_sets_only_settings_that_exist() -> None:
    env = compose()["x-tollgate-env"]
    known = {f"TOLLGATE_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known | PENDING_SETTINGS, set(env) - known - PENDING_SETTINGS


def test_every_tollgate_service_gets_the_settings() -> None:
    services = compose()["services"]
    env = compose()["x-tollgate-env"]
    for name, service in services.items():
        if service.get("command", [None])[0] == "tollgate":
            assert service["environment"] == env, name


def test_the_docs_document_every_setting() -> None:
    """The configuration page is generated from Settings (docs/hooks/generate.py): every
    setting is in the table it renders, each with a meaning."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate", ROOT / "docs" / "hooks" /
                                                  "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    table = generate.settings_table()
    assert "<!-- generated:settings -->" in (ROOT / "docs" / "configuration.md").read_text()
    rows = {row.split("`")[1]: row for row in table.splitlines()[2:]}
    for name in Settings.model_fields:
        variable = f"TOLLGATE_{name.upper()}"
        assert variable in rows, variable
        assert rows[variable].split("|")[2].strip(), variable  # a meaning


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    # The same processes everywhere (pytest-xdist, each test file on one of them); CI runs
    # the README's command without the fast lane's marker.
    assert 'python3 -m pytest -n 2 -m "not slow"' in readme
    assert "python3 -m pytest -q -n 2\n" in ci
    assert 'python -m pytest -n 2 -m "not slow"' in quickstart
    assert "python -m pytest -n 2 " in quickstart
    assert "--dist loadgroup" in pyproject and "pytest-xdist" in pyproject
    # The fast lane the README names is a marker pytest knows.
    assert "slow:" in pyproject
