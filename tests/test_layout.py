"""The shape of the code: no module grows past what a reader takes in at once."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400


def test_no_module_in_service_or_workers_is_over_400_lines() -> None:
    modules = [path for folder in ("service", "workers")
               for path in sorted((ROOT / folder).rglob("*.py"))]
    assert len(modules) > 20  # the walk found the code
    too_long = {str(path.relative_to(ROOT)): lines for path in modules
                if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert too_long == {}
