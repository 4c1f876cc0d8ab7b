"""The shape of the code: modules a reader takes in at once, and Redis behind service.state.

Imports of redis and fakeredis are held to service.state by an import-linter contract
(pyproject.toml); this catches the other way in, Core's client used from outside."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400


def test_no_module_in_service_or_workers_is_over_400_lines() -> None:
    modules = [path for folder in ("service", "workers")
               for path in sorted((ROOT / folder).rglob("*.py"))]
    assert len(modules) > 20  # the walk found the code
    too_long = {str(path.relative_to(ROOT)): lines for path in modules
                if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert too_long == {}


def test_only_service_state_uses_the_redis_client_of_core() -> None:
    raw_call = re.compile(r"\bcore\.(client|runner)\b")
    outside = [path for path in sorted((ROOT / "service").rglob("*.py"))
               if (ROOT / "service" / "state") not in path.parents]
    assert len(outside) > 20
    offenders = [f"{path.relative_to(ROOT)}:{number}" for path in outside
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if raw_call.search(line)]
    assert offenders == []


def test_workers_import_only_the_contract_and_the_settings_of_service() -> None:
    """An allow-list: the import-linter contract names the forbidden modules, so a new
    service module would slip past it; this catches any import of one."""
    allowed = {"service.contract", "service.settings"}
    modules = sorted((ROOT / "workers").rglob("*.py"))
    assert len(modules) > 5
    imported = {
        (str(path.relative_to(ROOT)), name) for path in modules
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        for name in (
            [alias.name for alias in node.names] if isinstance(node, ast.Import)
            else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        )
        if name == "service" or name.startswith("service.")
    }
    assert {name for _, name in imported} <= allowed, imported
    assert any(name == "service.contract" for _, name in imported)  # the walk sees imports


def test_no_module_of_service_or_workers_is_part_of_an_import_cycle() -> None:
    """import-linter's graph (grimp), lazy imports inside functions included: a cycle is
    an import A -> B with a way back from B to A."""
    graph = grimp.build_graph("service", "workers")
    assert len(graph.modules) > 50  # the graph holds the code
    assert graph.direct_import_exists(importer="service.cli.main", imported="service.cli.dev")
    cycles = {
        " -> ".join((module, *back))
        for module in sorted(graph.modules)
        for imported in graph.find_modules_directly_imported_by(module)
        if (back := graph.find_shortest_chain(importer=imported, imported=module))
    }
    assert cycles == set()
