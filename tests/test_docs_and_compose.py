"""compose.yaml and the docs stay in step with the code.

The compose stack itself (schema, healthchecks, profiles, the Dockerfile, monitoring) is
checked in tests/deploy/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from service.settings import GROUPS, Settings, group_of, grouped

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
    rows = {row.split("`")[1]: row for row in table.splitlines()
            if row.startswith("| `TOLLGATE_")}
    for name in Settings.model_fields:
        variable = f"TOLLGATE_{name.upper()}"
        assert variable in rows, variable
        assert rows[variable].split("|")[2].strip(), variable  # a meaning
    headings = [line.removeprefix("### ") for line in table.splitlines()
                if line.startswith("### ")]
    assert headings and set(headings) <= set(GROUPS)
    assert "duration" in rows["TOLLGATE_HOLD_TTL"] and "duration" in rows[
        "TOLLGATE_FLUSHER_INTERVAL"]


def test_every_setting_has_a_group_and_durations_take_units() -> None:
    assert {group_of(name) for name in Settings.model_fields} == set(GROUPS)
    settings = Settings(hold_ttl="5m", flusher_interval="250ms", webhook_log_ttl="7d",
                        webhook_timeout=2)
    assert (settings.hold_ttl, settings.flusher_interval) == (300, 0.25)
    assert settings.webhook_log_ttl == 7 * 86400 and settings.webhook_timeout == 2.0
    assert isinstance(settings.hold_ttl, int)
    assert grouped(settings)["flusher"]["flusher_interval"] == 0.25
    for bad in ({"hold_ttl": "1.5s"}, {"hold_ttl": "soon"}, {"lease_ttl": "1s"},
                {"flusher_interval": "-1s"}):
        with pytest.raises(ValidationError):
            Settings(**bad)


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
