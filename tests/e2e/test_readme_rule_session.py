"""The README's rule-preset curl session ("Params and rule presets"), run as written against
`tollgate dev`: each command's output is the one the README shows under it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.e2e.conftest import ROOT
from tests.e2e.devserver import tollgate_dev
from tests.e2e.test_readme_walkthrough import walkthrough_script


def session_script() -> str:
    section = (ROOT / "README.md").read_text().split("### Params and rule presets", 1)[1]
    return section.split("```bash\n", 1)[1].split("\n```", 1)[0]


def test_the_readme_rule_session_runs_against_tollgate_dev(tmp_path: Path) -> None:
    with tollgate_dev(tmp_path) as dev:
        # The walkthrough's variables and `get`: its lines up to the first request.
        prelude = walkthrough_script().split("\ncurl ", 1)[0]
        prelude = re.sub(r"^API=.*$", f"API={dev.url}", prelude, flags=re.M)
        prelude = re.sub(r"^TOKEN=.*$", f"TOKEN={dev.printed('token')}", prelude, flags=re.M)
        script = session_script()
        run = subprocess.run(["bash", "-c", "set -euo pipefail\n" + prelude + "\n" + script],
                             cwd=tmp_path, env=dev.env, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr + dev.log()[-3000:]
    out = run.stdout
    # Every output line the README shows (its `# ` comments after the first command).
    shown = [line[2:].split("   (")[0].strip() for line in script.splitlines()
             if line.startswith("# ")]
    flat = out.replace("\n", "")
    for line in shown:
        for part in re.split(r'"01m\.\.\."|"\.\.\."', line.strip()):
            assert part.strip() in flat, (part, out)
    assert "done thumbnail {'size': 64, 'format': 'webp'} True" in out
    assert "WEBP (64, 48)" in out
