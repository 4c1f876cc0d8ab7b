"""The docs site builds with `mkdocs build --strict` (a broken link or anchor, a page left out
of the nav, a hook error all fail it), its generated pages hold what the code has, and no
page loads anything from another host."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings
from tests.docs.examples import ROOT

pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
pytest.importorskip("material", reason="the docs extra: pip install -e '.[docs]'")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d",
                            str(target)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert built.returncode == 0, built.stdout + built.stderr
    return target


def test_the_rest_reference_is_the_apps_own_document(site: Path) -> None:
    from service.api.app import create_app

    page = (site / "reference" / "index.html").read_text()
    document = create_app(Settings(jwt_secret="x" * 32)).openapi_schema.to_schema()
    for path, methods in document["paths"].items():
        for method in methods:
            if method in ("get", "post", "put", "patch", "delete"):
                assert f"{method.upper()} {path}" in page, (method, path)
    for name in document["components"]["schemas"]:
        assert f'id="{name.lower()}"' in page, name
    assert (site / "openapi.json").is_file()


def test_the_configuration_page_lists_every_setting(site: Path) -> None:
    page = (site / "configuration" / "index.html").read_text()
    for name in Settings.model_fields:
        assert f"TOLLGATE_{name.upper()}" in page, name


def test_no_page_loads_anything_from_another_host(site: Path) -> None:
    for page in site.rglob("*.html"):
        text = page.read_text()
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', text)
        assert not remote, (page, remote)

