"""The rule-preset curl session (docs/models.md, "Params and rule presets"; it was the
README's), run as written against `tollgate dev`: each output the page shows in its
comments is in what the commands printed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.e2e.devserver import tollgate_dev
from tests.e2e.test_readme_walkthrough import section_blocks


def session_script() -> str:
    [block] = section_blocks("docs/models.md", "## Params and rule presets")
    return block.code


def test_the_docs_rule_session_runs_against_tollgate_dev(tmp_path: Path) -> None:
    with tollgate_dev(tmp_path) as dev:
        script = session_script()
        env = dev.reader_env()
        run = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script],
                             cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr + dev.log()[-3000:]
    out = run.stdout
    # Every output line the page shows (its `# ` comments after the first command).
    shown = [line[2:].split("   (")[0].strip() for line in script.splitlines()
             if line.startswith("# ")]
    assert len(shown) >= 5, script
    flat = out.replace("\n", "")
    for line in shown:
        for part in re.split(r'"01m\.\.\."|"\.\.\."', line.strip()):
            assert part.strip() in flat, (part, out)
    assert "done thumbnail {'size': 64, 'format': 'webp'} True" in out
    assert "WEBP (64, 48)" in out
