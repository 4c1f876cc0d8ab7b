"""The REST reference (docs/reference.md, "Problem codes") lists every problem code of
service/errors.py, with its status, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from service.errors import error_table

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference.md"


def test_the_reference_lists_every_problem_code_with_its_status() -> None:
    section = REFERENCE.read_text().split("## Problem codes", 1)[1].split("\n#", 1)[0]
    listed = set(re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", section, flags=re.M))
    assert listed == {(str(error.status), error.code) for error in error_table()}
