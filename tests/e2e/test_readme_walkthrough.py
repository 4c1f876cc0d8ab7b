"""The quickstart's curl session (docs/quickstart.md, "A job with curl"; it was the README's
walkthrough), run as written against `tollgate dev` on a bare machine: only the three
variables the page documents are set, from what dev prints."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.docs.examples import ROOT, Block, blocks
from tests.e2e.devserver import tollgate_dev


def section_blocks(page: str, heading: str) -> list[Block]:
    """The runnable blocks under `heading` of a docs page, up to the next heading of its
    level."""
    text = (ROOT / page).read_text()
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    after = text.find(f"\n{level} ", start + len(heading))
    first = text[:start].count("\n") + 1
    last = text[:after].count("\n") + 1 if after != -1 else len(text.splitlines()) + 1
    return [block for block in blocks(ROOT / page)
            if not block.skip and first <= block.line <= last]


def walkthrough_script() -> str:
    return "\n".join(block.code for block in section_blocks("docs/quickstart.md",
                                                             "## A job with curl"))


def test_the_quickstart_walkthrough_runs_against_tollgate_dev(tmp_path: Path) -> None:
    with tollgate_dev(tmp_path) as dev:
        env = dev.reader_env()
        # Any failed command fails the run.
        run = subprocess.run(["bash", "-c", "set -euo pipefail\n" + walkthrough_script()],
                             cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=180)
        out = run.stdout
        assert run.returncode == 0, out + run.stderr + dev.log()[-3000:]
    assert '"status":"created"' in out and "\nqueued\n" in out
    assert re.search(r'"status":"done","total_items":2,"done_items":2,"failed_items":0', out)
    assert '"duplicate":false' in out and '"duplicate":true' in out
    assert "\npro\n" in out and "\nbob-1\n" in out
    assert "\ncanceled\n" in out and "event: job" in out
