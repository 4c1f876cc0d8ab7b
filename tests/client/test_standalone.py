"""The client ships for app back ends: of service, it may import only itself. An allow-list
over every import statement, lazy ones included (the import-linter contract names the
forbidden modules, so a new service package would slip past it)."""

from __future__ import annotations

import ast
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "service" / "client"


def test_the_client_imports_nothing_of_service_but_itself() -> None:
    modules = sorted(CLIENT.glob("*.py"))
    assert len(modules) >= 10
    imported = {
        (path.name, name) for path in modules
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        for name in (
            [alias.name for alias in node.names] if isinstance(node, ast.Import)
            else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        )
        if name.split(".")[0] in ("service", "workers", "tests")
    }
    assert ("aio.py", "service.client.io_async") in imported  # the walk sees imports
    assert {(path, name) for path, name in imported
            if name != "service.client" and not name.startswith("service.client.")} == set()
